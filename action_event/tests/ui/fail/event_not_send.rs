use std::cell::Cell;

use action_event::prelude::*;

// Events move between threads: every field must be `Send` and `Sync`.
#[derive(Serialize, Deserialize)]
#[action_event]
pub struct CountEvent {
    pub count: Cell<u32>,
}

impl Process for CountEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
