use action_event::prelude::*;

#[action_event(base)]
pub struct ApplicationEvent;

#[derive(Serialize, Deserialize)]
#[action_event(extends = ApplicationEvnt)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
