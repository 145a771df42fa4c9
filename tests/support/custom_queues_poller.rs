//! A poller whose events use custom queues (`urgent`, `mailers`), for the
//! end-to-end tests of how a poller places and names queues it was not told
//! about. Not part of the demo; built only as a test fixture.

use action_event::prelude::*;

/// On the custom queue `urgent`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "urgent")]
struct PageOncallEvent {
    who: String,
}

impl Process for PageOncallEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        println!("paged {}", self.who);
        Ok(())
    }
}

/// On the custom queue `mailers`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "mailers")]
struct SendDigestEvent {}

impl Process for SendDigestEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

/// On `high`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high")]
struct PingEvent {}

impl Process for PingEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    action_event::poller::main(State::new())
}
