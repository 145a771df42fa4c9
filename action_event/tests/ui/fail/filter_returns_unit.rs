use action_event::prelude::*;

#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

// Filters return `Result<Flow>`.
async fn log_params(cx: &mut Context) -> Result<()> {
    println!("{}", cx.params());
    Ok(())
}

fn main() {}
