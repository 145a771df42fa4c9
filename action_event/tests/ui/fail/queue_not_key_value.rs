use action_event::prelude::*;

async fn app() -> Result<()> {
    queue!(hello_world, "world").await?;
    Ok(())
}

fn main() {}
