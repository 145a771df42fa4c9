//! The base every event of the demo extends.

use action_event::prelude::*;

/// Every event of the app runs these filters first.
#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

/// Logs the event's params before it runs.
pub async fn log_params(cx: &mut Context) -> Result<Flow> {
    tracing_log(cx);
    Ok(Flow::Continue)
}

fn tracing_log(cx: &Context) {
    eprintln!(
        "[{}] attempt {} params {}",
        cx.name(),
        cx.attempt(),
        cx.params()
    );
}
