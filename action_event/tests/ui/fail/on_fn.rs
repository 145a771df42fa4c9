use action_event::prelude::*;

#[action_event]
pub async fn hello_world(_cx: &Context) -> Result<()> {
    Ok(())
}

fn main() {}
