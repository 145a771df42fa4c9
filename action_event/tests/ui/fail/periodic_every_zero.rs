use action_event::prelude::*;

#[derive(Default, Serialize, Deserialize)]
#[action_event(every = "0s")]
pub struct SweepEvent {}

impl Process for SweepEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
