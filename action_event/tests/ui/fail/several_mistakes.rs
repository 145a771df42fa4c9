// Each mistake in the arguments is reported, not only the first.
use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event(queu = "high", retries = "3", timeout = 30)]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
