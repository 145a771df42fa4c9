use action_event::prelude::*;

async fn app(name: &str) -> Result<()> {
    queue!(name.to_string(), id = 5).await?;
    Ok(())
}

fn main() {}
