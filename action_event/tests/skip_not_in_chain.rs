//! A skip of a filter that is not in the chain: the registry is an error
//! naming the event and the filter.

use action_event::prelude::*;

async fn log_params(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}
async fn load_tenant(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}

#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

#[derive(Serialize, Deserialize)]
#[action_event(extends = ApplicationEvent)]
#[skip_before_filter(load_tenant)]
pub struct HelloWorldEvent {}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

#[test]
fn the_error_names_the_event_and_the_filter() {
    let err = action_event::registry().unwrap_err().to_string();
    assert_eq!(
        err,
        "event registry: event `hello_world` (skip_not_in_chain::HelloWorldEvent) skips before_filter \
         `load_tenant`, which is not in its chain (log_params)"
    );
}
