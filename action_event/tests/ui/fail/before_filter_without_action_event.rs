use action_event::prelude::*;

#[before_filter(log_params)]
pub struct ApplicationEvent;

async fn log_params(cx: &mut Context) -> Result<Flow> {
    println!("{}", cx.params());
    Ok(Flow::Continue)
}

fn main() {}
