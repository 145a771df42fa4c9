use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event]
pub struct HelloWorldEvent(pub String);

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
