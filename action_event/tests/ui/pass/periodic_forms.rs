// The periodic forms: `every`, `cron` with seconds or without, in a time
// zone, both missed-tick policies; registered with their schedules.
use action_event::prelude::*;

#[derive(Debug, Default, Serialize, Deserialize)]
#[action_event(every = "5m", queue = "low")]
pub struct SweepCartsEvent {}

#[derive(Debug, Default, Serialize, Deserialize)]
#[action_event(cron = "0 30 9 * * Mon-Fri", timezone = "Europe/Berlin", missed = "skip")]
pub struct DigestEvent {
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[action_event(cron = "*/15 * * * *", missed = "once")]
pub struct QuarterHourEvent {}

impl Process for SweepCartsEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

impl Process for DigestEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

impl Process for QuarterHourEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() {
    let registry = action_event::registry().expect("registry");
    let schedule = |name: &str| {
        registry
            .get(name)
            .and_then(|e| e.periodic.as_ref())
            .map(|p| p.schedule.to_string())
    };
    assert_eq!(schedule("sweep_carts").as_deref(), Some("every 5m"));
    assert_eq!(
        schedule("digest").as_deref(),
        Some("cron 0 30 9 * * Mon-Fri (Europe/Berlin)")
    );
    assert_eq!(schedule("quarter_hour").as_deref(), Some("cron */15 * * * * (UTC)"));
}
