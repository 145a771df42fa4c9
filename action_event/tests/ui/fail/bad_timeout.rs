use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event(timeout = "30 parsecs")]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
