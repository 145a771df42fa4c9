//! `cargo run --example testing`: the two test modes of
//! `action_event::testing`, run from a `main` so you can watch them; in an
//! app they sit in `#[tokio::test]` functions (see the README).
//!
//! - `testing::fake()`: `queue!` records the event. Assert what was queued
//!   (`assert_queued` matches a subset of the params), then `drain()` runs
//!   the recorded events through the real filters and handlers, delayed
//!   ones at once.
//! - `testing::inline()`: `queue!` runs the event in place; a failure comes
//!   back as the `Err` of the `queue!`.
//!
//! Both take the app's state with `.with_state(..)`. A mode holds for the
//! thread that made it: this example runs on a current-thread runtime, like
//! `#[tokio::test]`.

use std::sync::{Arc, Mutex};

use action_event::prelude::*;
use action_event::{Outcome, State, testing};
use serde_json::json;

/// The app's mailer; a test hands in one that records what it sent.
#[derive(Clone, Default)]
struct Mailer(Arc<Mutex<Vec<String>>>);

impl Mailer {
    fn send(&self, to: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(to.to_string());
    }
    fn sent(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A user signed up: queue their welcome mail for an hour later.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high")]
pub struct SignupEvent {
    pub email: String,
    pub source: String,
}

impl Process for SignupEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        queue!(welcome_email, email = self.email, delay = "1h").await?;
        Ok(())
    }
}

/// `deny_unknown_fields`: a param the struct does not have (a typo such as
/// `emial`) is an error instead of being ignored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[action_event]
pub struct WelcomeEmailEvent {
    pub email: String,
}

impl Process for WelcomeEmailEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        action_event::anyhow::ensure!(self.email.contains('@'), "bad address {}", self.email);
        cx.state::<Mailer>()?.send(&self.email);
        Ok(())
    }
}

/// The app code under test.
async fn signup(email: &str) -> Result<()> {
    queue!(signup, email = email, source = "web").await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // fake: record, assert, then drain.
    {
        let mailer = Mailer::default();
        let fake = testing::fake().with_state(State::new().with(mailer.clone()));
        signup("ann@example.com").await?;
        // A subset of the params: `source` is not checked here.
        fake.assert_queued("signup", json!({"email": "ann@example.com"}));
        fake.assert_not_queued("welcome_email");
        // Runs `signup`, then the `welcome_email` it queued (its 1h delay
        // is not waited for).
        let ran = fake.drain().await;
        for r in &ran {
            println!("fake: ran {} -> {:?}", r.envelope.name, r.outcome);
        }
        action_event::anyhow::ensure!(
            ran.len() == 2 && ran.iter().all(|r| r.outcome == Outcome::Completed),
            "fake: expected two completed runs"
        );
        println!("fake: mailer sent {:?}", mailer.sent());
        action_event::anyhow::ensure!(mailer.sent() == ["ann@example.com"]);
    }

    // inline: each queue! runs the event (and what it queues) before it
    // returns.
    {
        let mailer = Mailer::default();
        let inline = testing::inline().with_state(State::new().with(mailer.clone()));
        signup("bob@example.com").await?;
        println!("inline: mailer sent {:?}", mailer.sent());
        action_event::anyhow::ensure!(mailer.sent() == ["bob@example.com"]);

        // The handler's error is the queue!'s error.
        let err = queue!(welcome_email, email = "nobody").await;
        println!("inline: bad address -> {}", describe(&err));
        action_event::anyhow::ensure!(err.is_err(), "a failing handler must fail the queue!");

        // A typo in a param name, caught by `deny_unknown_fields`.
        let err = queue!(welcome_email, emial = "carl@example.com").await;
        println!("inline: typo `emial` -> {}", describe(&err));
        action_event::anyhow::ensure!(err.is_err(), "a misspelt param must fail");
        println!("inline: {} runs in all", inline.ran().len());
    }
    Ok(())
}

fn describe<T>(r: &std::result::Result<T, action_event::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
}
