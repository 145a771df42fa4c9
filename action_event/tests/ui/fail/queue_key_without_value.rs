use action_event::prelude::*;

async fn app() -> Result<()> {
    queue!(hello_world, name =).await?;
    Ok(())
}

fn main() {}
