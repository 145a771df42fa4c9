use action_event::prelude::*;

#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

// Filters take `&mut Context`.
async fn log_params(cx: &Context) -> Result<Flow> {
    println!("{}", cx.params());
    Ok(Flow::Continue)
}

fn main() {}
