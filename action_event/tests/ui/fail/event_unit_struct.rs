use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event]
pub struct CleanupEvent;

impl Process for CleanupEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
