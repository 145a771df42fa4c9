use action_event::prelude::*;

#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

async fn log_params(cx: &mut Context) -> Result<Flow> {
    println!("{}", cx.params());
    Ok(Flow::Continue)
}

#[derive(Serialize, Deserialize)]
#[action_event(extends = ApplicationEvent)]
#[skip_before_filter(log_parms)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
