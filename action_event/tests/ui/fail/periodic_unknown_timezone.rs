use action_event::prelude::*;

#[derive(Default, Serialize, Deserialize)]
#[action_event(cron = "0 30 9 * * Mon-Fri", timezone = "europe/berlin")]
pub struct DigestEvent {}

impl Process for DigestEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
