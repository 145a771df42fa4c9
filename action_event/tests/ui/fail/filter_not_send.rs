use std::rc::Rc;

use action_event::prelude::*;

#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

async fn write_log(line: &str) {
    println!("{line}");
}

// The future of a filter must be `Send`: this one holds an `Rc` across an `.await`.
async fn log_params(cx: &mut Context) -> Result<Flow> {
    let line = Rc::new(cx.params().to_string());
    write_log(&line).await;
    Ok(Flow::Continue)
}

fn main() {}
