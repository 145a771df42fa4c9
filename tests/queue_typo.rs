//! A binary that links every event (`use demo as _;`): a typo in an event
//! name is an error at the `queue!` call, naming the nearest event, not an
//! event that a poller retries for half an hour and then dead-letters. The
//! same in a test under `testing::fake()`.

use std::time::{Duration, Instant};

use action_event::{Error, testing};
use demo as _;

fn assert_typo(r: std::result::Result<action_event::EventId, Error>) {
    let err = r.expect_err("a typo must fail at the call");
    assert!(matches!(err, Error::UnknownEvent { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("unknown event `helo_world`: did you mean `hello_world`?"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_typo_fails_at_once_naming_the_event_meant() {
    assert!(
        action_event::registry()
            .expect("registry")
            .get("hello_world")
            .is_some(),
        "this binary links demo's events"
    );
    let started = Instant::now();
    // No broker is configured or reached: the name is checked first.
    assert_typo(action_event::queue!(helo_world, name = "world").await);
    assert!(started.elapsed() < Duration::from_secs(1));

    let fake = testing::fake();
    assert_typo(action_event::queue!(helo_world, name = "world").await);
    assert!(fake.is_empty());
}
