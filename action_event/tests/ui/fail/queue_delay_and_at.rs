use action_event::prelude::*;

async fn app() -> Result<()> {
    queue!(reminder, id = 5, delay = "30s", at = std::time::SystemTime::now()).await?;
    Ok(())
}

fn main() {}
