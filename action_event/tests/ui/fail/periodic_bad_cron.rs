use action_event::prelude::*;

#[derive(Default, Serialize, Deserialize)]
#[action_event(cron = "0 30 25 * * *")]
pub struct DigestEvent {}

impl Process for DigestEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
