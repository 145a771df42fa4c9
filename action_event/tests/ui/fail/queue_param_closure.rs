// A closure's parameters do not end the argument: the whole closure is the
// value of `add`, and the error is that a closure is not `Serialize` (not a
// stray `b| a + b` that is not `key = value`).
use action_event::prelude::*;

async fn app() -> Result<()> {
    queue!(stats, add = |a: u8, b: u8| a + b, n = 1).await?;
    Ok(())
}

fn main() {}
