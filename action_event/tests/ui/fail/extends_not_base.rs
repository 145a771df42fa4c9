use action_event::prelude::*;

/// A plain struct, not declared with `#[action_event(base)]`.
pub struct ApplicationEvent;

#[derive(Serialize, Deserialize)]
#[action_event(extends = ApplicationEvent)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
