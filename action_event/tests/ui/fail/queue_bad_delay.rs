use action_event::prelude::*;

async fn app() -> Result<()> {
    queue!(reminder, id = 5, delay = "30 parsecs").await?;
    Ok(())
}

fn main() {}
