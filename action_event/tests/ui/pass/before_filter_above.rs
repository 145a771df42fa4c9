// `#[before_filter]` and `#[skip_before_filter]` may be written above
// `#[action_event]`: they move themselves below it.
use action_event::prelude::*;

#[before_filter(log_params)]
#[action_event(base)]
#[before_filter(load_tenant)]
pub struct ApplicationEvent;

async fn log_params(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}
async fn load_tenant(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}
async fn audit(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}
async fn count(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}
async fn last(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Continue)
}

#[derive(Serialize, Deserialize)]
#[skip_before_filter(load_tenant)]
#[before_filter(audit)]
#[before_filter(count)]
#[action_event(extends = ApplicationEvent)]
#[before_filter(last)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {
    let registry = action_event::registry().unwrap();
    let chain: Vec<&str> = registry
        .get("hello_world")
        .unwrap()
        .chain
        .iter()
        .map(|f| f.path)
        .collect();
    // In the order written, wherever the attributes are.
    assert_eq!(chain, ["log_params", "audit", "count", "last"]);
}
