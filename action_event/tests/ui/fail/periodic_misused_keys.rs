use action_event::prelude::*;

// `every` with `cron`, `timezone` without `cron`, an unknown policy, a
// base that is periodic: each reported at its key.
#[derive(Default, Serialize, Deserialize)]
#[action_event(every = "5m", cron = "0 * * * *")]
pub struct BothEvent {}

#[derive(Default, Serialize, Deserialize)]
#[action_event(every = "5m", timezone = "Europe/Berlin", missed = "all")]
pub struct ZoneEvent {}

#[action_event(base, every = "1h")]
pub struct PeriodicBase;

impl Process for BothEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

impl Process for ZoneEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}
