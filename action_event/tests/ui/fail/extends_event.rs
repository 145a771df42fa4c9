use action_event::prelude::*;

// An event (not a base) cannot be extended.
#[derive(Serialize, Deserialize)]
#[action_event]
pub struct GreetEvent {}

impl Process for GreetEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[action_event(extends = GreetEvent)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
