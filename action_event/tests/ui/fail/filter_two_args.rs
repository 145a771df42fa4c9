use action_event::prelude::*;

#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

// A filter takes the context only; it reads params with `cx.param("key")`.
async fn log_params(cx: &mut Context, verbose: bool) -> Result<Flow> {
    if verbose {
        println!("{}", cx.params());
    }
    Ok(Flow::Continue)
}

fn main() {}
