use action_event::prelude::*;

async fn app() -> Result<()> {
    queue!(hello_world, name = "world", name = "moon").await?;
    Ok(())
}

fn main() {}
