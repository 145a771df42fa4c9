use action_event::prelude::*;

async fn app() -> Result<()> {
    queue!().await?;
    Ok(())
}

fn main() {}
