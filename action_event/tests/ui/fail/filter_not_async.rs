use action_event::prelude::*;

#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

// Filters are `async fn`.
fn log_params(cx: &mut Context) -> Result<Flow> {
    println!("{}", cx.params());
    Ok(Flow::Continue)
}

fn main() {}
