use action_event::prelude::*;

#[action_event(base)]
#[before_filter(log_parms)]
pub struct ApplicationEvent;

async fn log_params(cx: &mut Context) -> Result<Flow> {
    println!("{}", cx.params());
    Ok(Flow::Continue)
}

fn main() {}
