use action_event::prelude::*;

// A periodic event is queued with its `Default` params: a required field
// without one is a compile error.
#[derive(Serialize, Deserialize)]
#[action_event(every = "5m")]
pub struct SweepEvent {
    pub older_than_days: u32,
}

impl Process for SweepEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
