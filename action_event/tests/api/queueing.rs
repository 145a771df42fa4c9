//! What `queue!` and `QueueRequest` build, checked without a broker:
//! `QueueRequest::into_envelope` resolves the queue and checks the params
//! exactly as `send` does before publishing.
//!
//! The queue: the one given at the call site, else the handler's; an event
//! this binary does not know is an error unless queued as foreign, with its
//! queue.

use std::future::Future;
use std::time::{Duration, UNIX_EPOCH};

use action_event::prelude::*;
use action_event::{Error, QueueRequest};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "low")]
pub struct GreetWorldEvent {
    pub name: String,
}

impl Process for GreetWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

#[test]
fn the_call_site_queue_wins() {
    let env = QueueRequest::new("greet_world")
        .param("name", "world")
        .queue("high")
        .into_envelope()
        .unwrap();
    assert_eq!(env.queue, "high");
    assert_eq!(env.name, "greet_world");
    assert_eq!(env.params, json!({"name": "world"}));
    assert_eq!(env.attempt, 1);
    assert_eq!(env.run_at_ms, None);
}

#[test]
fn else_the_handlers_queue() {
    let env = QueueRequest::new("greet_world")
        .param("name", "world")
        .into_envelope()
        .unwrap();
    assert_eq!(env.queue, "low");
}

#[test]
fn an_event_this_binary_does_not_know_is_an_error_unless_foreign_with_its_queue() {
    // No guess at its queue: an error naming the fix.
    let err = QueueRequest::new("send_invoice")
        .param("people_ids", [1, 2, 3])
        .into_envelope()
        .unwrap_err();
    assert!(matches!(err, Error::UnknownEvent { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("QueueRequest::foreign(\"send_invoice\")"),
        "{err}"
    );
    // Another service's event: the caller states the queue; not checked.
    let env = QueueRequest::foreign("send_invoice")
        .param("people_ids", [1, 2, 3])
        .queue("medium")
        .into_envelope()
        .unwrap();
    assert_eq!(env.queue, action_event::DEFAULT_QUEUE);
    assert_eq!(env.params, json!({"people_ids": [1, 2, 3]}));
}

#[test]
fn a_bad_queue_name_is_an_error_naming_the_event() {
    let err = QueueRequest::new("greet_world")
        .param("name", "world")
        .queue("very high")
        .into_envelope()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("event `greet_world`: bad queue name `very high`"),
        "{err}"
    );
}

#[test]
fn params_of_a_known_event_are_checked() {
    let err = QueueRequest::new("greet_world")
        .param("name", 5)
        .into_envelope()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("event `greet_world`"), "{err}");
    assert!(err.contains("at `name`"), "{err}");

    let err = QueueRequest::new("greet_world")
        .param("name", "a")
        .param("name", "b")
        .into_envelope()
        .unwrap_err()
        .to_string();
    assert_eq!(err, "event `greet_world`: param `name` given twice");
}

#[test]
fn delays_set_run_at() {
    let now = action_event::envelope::now_ms();
    let env = QueueRequest::new("greet_world")
        .param("name", "later")
        .delay_str("30s")
        .into_envelope()
        .unwrap();
    let at = env.run_at_ms.unwrap();
    assert!((now + 30_000..now + 35_000).contains(&at), "{at} vs {now}");

    let env = QueueRequest::new("greet_world")
        .param("name", "later")
        .at(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        .into_envelope()
        .unwrap();
    assert_eq!(env.run_at_ms, Some(2_000_000_000_000));

    let err = QueueRequest::new("greet_world")
        .delay_str("soon")
        .into_envelope()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("event `greet_world`: bad delay `soon`"),
        "{err}"
    );
}

#[test]
fn typed_requests_carry_the_struct() {
    let env = QueueRequest::typed(&GreetWorldEvent {
        name: "typed".into(),
    })
    .unwrap()
    .into_envelope()
    .unwrap();
    assert_eq!(env.name, "greet_world");
    assert_eq!(env.queue, "low");
    assert_eq!(env.params, json!({"name": "typed"}));
}

/// `queue!` is a `Send + 'static` future of `Result<EventId, Error>`. The
/// futures are built and dropped, never polled: nothing is sent.
#[test]
fn queue_macro_is_a_future_of_an_event_id() {
    fn check<F: Future<Output = std::result::Result<EventId, Error>> + Send + 'static>(_: F) {}
    let name = String::from("world");
    check(queue!(greet_world, name = name));
    check(queue!("greet_world", name = "world", queue = high));
    check(queue!(
        send_email,
        people_ids = [1, 2, 3],
        queue = "high",
        delay = "30s"
    ));
    check(
        GreetWorldEvent {
            name: "typed".into(),
        }
        .queue(),
    );
}
