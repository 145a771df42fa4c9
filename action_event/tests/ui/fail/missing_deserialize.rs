use action_event::prelude::*;

#[derive(Serialize)]
#[action_event]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
