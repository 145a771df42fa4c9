//! How a run ends when something goes wrong: an `Err` in a filter or the
//! handler, a panic, a timeout, params that do not fit, an unknown name.
//! Each is an `Outcome::Failed` whose kind says what should become of the
//! event and whose message names the event (and the field, for params).

use std::sync::Arc;
use std::time::{Duration, Instant};

use action_event::prelude::*;
use action_event::{Envelope, Failure, FailureKind, Outcome, QueueRequest, Registry};
use serde_json::json;

fn registry() -> &'static Registry {
    action_event::registry().expect("the events of this file are consistent")
}

async fn run(name: &str, params: serde_json::Value) -> Outcome {
    let env = Envelope::new(name, "medium", params);
    registry().dispatch(&env, Arc::new(State::new())).await
}

async fn failure(name: &str, params: serde_json::Value) -> Failure {
    match run(name, params).await {
        Outcome::Failed(f) => f,
        other => panic!("expected `{name}` to fail, got {other:?}"),
    }
}

// --- Err ------------------------------------------------------------------

async fn refuse(cx: &mut Context) -> Result<Flow> {
    let refuse: bool = cx.param("refuse")?;
    anyhow::ensure!(!refuse, "refused by the filter");
    Ok(Flow::Continue)
}

#[derive(Serialize, Deserialize)]
#[action_event]
#[before_filter(refuse)]
pub struct ChargeEvent {
    pub refuse: bool,
    pub amount: i64,
}

impl Process for ChargeEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        if self.amount < 0 {
            anyhow::bail!("amount {} is negative", self.amount);
        }
        Ok(())
    }
}

#[tokio::test]
async fn err_in_a_filter_fails_with_its_message() {
    let f = failure("charge", json!({"refuse": true, "amount": 1})).await;
    assert_eq!(f.kind, FailureKind::Error);
    assert!(f.kind.retryable());
    assert_eq!(
        f.message,
        "event `charge`: before_filter `refuse`: refused by the filter"
    );
}

#[tokio::test]
async fn err_in_process_fails_with_its_message() {
    let f = failure("charge", json!({"refuse": false, "amount": -5})).await;
    assert_eq!(f.kind, FailureKind::Error);
    assert_eq!(f.message, "event `charge`: amount -5 is negative");
    assert_eq!(
        run("charge", json!({"refuse": false, "amount": 5})).await,
        Outcome::Completed
    );
}

// --- Panic ----------------------------------------------------------------

async fn explode(cx: &mut Context) -> Result<Flow> {
    if cx.param::<bool>("in_filter")? {
        panic!("filter blew up");
    }
    Ok(Flow::Continue)
}

#[derive(Serialize, Deserialize)]
#[action_event]
#[before_filter(explode)]
pub struct FragileEvent {
    pub in_filter: bool,
    pub code: u32,
}

impl Process for FragileEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        panic!("handler blew up with code {}", self.code);
    }
}

#[tokio::test]
async fn a_panic_fails_with_kind_panic_and_its_message() {
    let f = failure("fragile", json!({"in_filter": false, "code": 42})).await;
    assert_eq!(f.kind, FailureKind::Panic);
    assert!(f.kind.retryable());
    assert_eq!(
        f.message,
        "event `fragile` panicked: handler blew up with code 42"
    );

    let f = failure("fragile", json!({"in_filter": true, "code": 1})).await;
    assert_eq!(f.kind, FailureKind::Panic);
    assert_eq!(f.message, "event `fragile` panicked: filter blew up");
}

// --- Timeout --------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[action_event(timeout = "100ms")]
pub struct SlowEvent {
    pub sleep_ms: u64,
}

impl Process for SlowEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        Ok(())
    }
}

#[tokio::test]
async fn running_past_the_timeout_fails_with_kind_timeout() {
    let started = Instant::now();
    let f = failure("slow", json!({"sleep_ms": 10_000})).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout did not cut the run short"
    );
    assert_eq!(f.kind, FailureKind::Timeout);
    assert!(f.kind.retryable());
    assert_eq!(f.message, "event `slow` timed out after 100ms");

    assert_eq!(
        run("slow", json!({"sleep_ms": 1})).await,
        Outcome::Completed
    );
}

// --- Params ---------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[action_event]
pub struct SendEmailEvent {
    pub people_ids: Vec<u64>,
    pub subject: Subject,
}

#[derive(Serialize, Deserialize)]
pub struct Subject {
    pub text: String,
}

impl Process for SendEmailEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn params_that_do_not_fit_name_the_event_and_the_field() {
    let f = failure(
        "send_email",
        json!({"people_ids": [1, "two", 3], "subject": {"text": "hi"}}),
    )
    .await;
    assert_eq!(f.kind, FailureKind::BadParams);
    assert!(!f.kind.retryable());
    assert!(f.message.starts_with("event `send_email`"), "{}", f.message);
    assert!(f.message.contains("at `people_ids[1]`"), "{}", f.message);
    assert!(f.message.contains("expected u64"), "{}", f.message);

    let f = failure(
        "send_email",
        json!({"people_ids": [], "subject": {"text": 5}}),
    )
    .await;
    assert_eq!(f.kind, FailureKind::BadParams);
    assert!(f.message.contains("at `subject.text`"), "{}", f.message);

    let f = failure("send_email", json!({"people_ids": []})).await;
    assert_eq!(f.kind, FailureKind::BadParams);
    assert!(
        f.message.contains("missing field `subject`"),
        "{}",
        f.message
    );
}

#[test]
fn into_envelope_checks_params_and_names_the_event_and_the_field() {
    let err = QueueRequest::new("send_email")
        .param("people_ids", json!([1, 2, "three"]))
        .param("subject", json!({"text": "hi"}))
        .into_envelope()
        .unwrap_err();
    assert!(matches!(err, action_event::Error::Params { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("event `send_email`"), "{msg}");
    assert!(msg.contains("at `people_ids[2]`"), "{msg}");

    let env = QueueRequest::new("send_email")
        .param("people_ids", [1, 2, 3])
        .param("subject", json!({"text": "hi"}))
        .into_envelope()
        .unwrap();
    assert_eq!(
        env.params,
        json!({"people_ids": [1, 2, 3], "subject": {"text": "hi"}})
    );
}

// --- Unknown event ----------------------------------------------------------

#[tokio::test]
async fn an_unknown_event_lists_the_known_ones() {
    let f = failure("send_emial", json!({})).await;
    assert_eq!(f.kind, FailureKind::UnknownEvent);
    assert!(f.kind.retryable());
    // This binary's events are also those of the other modules (`main.rs`).
    let known: Vec<String> = registry()
        .names()
        .iter()
        .map(|n| format!("`{n}`"))
        .collect();
    for ours in ["`charge`", "`fragile`", "`send_email`", "`slow`"] {
        assert!(known.iter().any(|k| k == ours), "{ours} in {known:?}");
    }
    assert_eq!(
        f.message,
        format!(
            "unknown event `send_emial`: this binary knows {}",
            known.join(", ")
        )
    );
}
