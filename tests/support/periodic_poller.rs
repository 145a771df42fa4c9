//! A poller with periodic events, for the end-to-end tests of periodic
//! ticks (tests/e2e/periodic_e2e.rs). Its own binary, so that the other
//! end-to-end tests, on `e2e_poller`, see no periodic event.
//!
//! The tests run it with `--queues idle`: it serves none of the periodic
//! events' queues, so their ticks stay queued, to be counted by id (and the
//! test shows that a poller queues ticks for queues it does not serve).

use action_event::prelude::*;

/// Every second; missed ticks: one event for all of them (the default).
#[derive(Debug, Default, Serialize, Deserialize)]
#[action_event(every = "1s", queue = "ticks")]
struct EverySecondEvent {}

impl Process for EverySecondEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

/// Every second; missed ticks are skipped.
#[derive(Debug, Default, Serialize, Deserialize)]
#[action_event(every = "1s", queue = "ticks", missed = "skip")]
struct EverySecondSkipEvent {}

impl Process for EverySecondSkipEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

/// A daily cron event in a time zone, for `poller status`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[action_event(
    cron = "0 30 9 * * Mon-Fri",
    timezone = "Europe/Berlin",
    queue = "ticks"
)]
struct MorningDigestEvent {}

impl Process for MorningDigestEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

/// The queue the pollers serve.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "idle")]
struct IdleEvent {}

impl Process for IdleEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    action_event::poller::main(State::new())
}
