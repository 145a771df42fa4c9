use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event(queue = "high")]
#[action_event(retries = 3)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
