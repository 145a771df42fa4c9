use action_event::prelude::*;

#[before_filter(log_params)]
#[action_event]
pub enum HelloWorldEvent {
    World,
}

async fn log_params(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}

fn main() {}
