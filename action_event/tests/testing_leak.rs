//! `testing::fake` / `testing::inline` never let an event escape to a real
//! broker. A `queue!` in a task that carries the mode (same thread, or
//! `fake.scope(..)`) is recorded; one that does not (a task spawned onto a
//! worker thread, `spawn_blocking`) fails with `Error::OutsideTestMode`,
//! naming `fake.scope`, instead of falling through to the global client,
//! which would create `action_event.db` here (or reach `ACTION_EVENT_URL`).
//! An explicit `Client` still reaches its own broker beside a fake.

use std::path::{Path, PathBuf};

use action_event::prelude::*;
use action_event::{Client, Error, QueueRequest, testing};

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "low")]
pub struct PingEvent {
    pub n: u32,
}

impl Process for PingEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

/// The file the global client would create (`sqlite://action_event.db`,
/// relative to the crate directory cargo runs tests in).
fn default_db() -> PathBuf {
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("action_event.db");
    assert!(
        !db.exists(),
        "{} exists before the test: remove it, or this test cannot tell a leak",
        db.display()
    );
    db
}

fn assert_outside(r: std::result::Result<EventId, Error>) {
    let err = r.expect_err("a queue! outside the mode must fail");
    assert!(matches!(err, Error::OutsideTestMode { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("event `ping`: queued outside the test mode"),
        "{msg}"
    );
    assert!(msg.contains("fake.scope(async move"), "{msg}");
}

#[tokio::test]
async fn current_thread_spawned_tasks_carry_the_mode_and_blocking_threads_fail() {
    let db = default_db();
    let fake = testing::fake();
    // Spawned on the current-thread runtime: the test's own thread.
    tokio::spawn(async { queue!(ping, n = 1).await })
        .await
        .expect("task")
        .expect("recorded");
    // A blocking thread has no mode.
    let handle = tokio::runtime::Handle::current();
    let r = tokio::task::spawn_blocking(move || handle.block_on(queue!(ping, n = 2)))
        .await
        .expect("blocking task");
    assert_outside(r);
    assert_eq!(fake.queued_named("ping").len(), 1);
    assert_eq!(fake.queued()[0].params["n"], 1);
    assert!(
        !db.exists(),
        "an event escaped the fake into {}",
        db.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_spawned_tasks_fail_unless_scoped() {
    let db = default_db();
    let fake = testing::fake();
    // Enough tasks that some land on a worker thread (all of them do: the
    // test's thread is not a worker of this runtime).
    let mut unscoped = Vec::new();
    for n in 0..8 {
        unscoped.push(tokio::spawn(async move { queue!(ping, n = n).await }));
    }
    for t in unscoped {
        assert_outside(t.await.expect("task"));
    }
    tokio::spawn(fake.scope(async { queue!(ping, n = 100).await }))
        .await
        .expect("task")
        .expect("recorded");
    assert_eq!(fake.len(), 1);
    assert_eq!(fake.queued()[0].params["n"], 100);
    assert!(
        !db.exists(),
        "an event escaped the fake into {}",
        db.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_mode_keeps_spawned_tasks_in_too() {
    let db = default_db();
    let inline = testing::inline();
    let r = tokio::spawn(async { queue!(ping, n = 1).await })
        .await
        .expect("task");
    assert_outside(r);
    tokio::spawn(inline.scope(async { queue!(ping, n = 2).await }))
        .await
        .expect("task")
        .expect("ran");
    assert_eq!(inline.ran().len(), 1);
    assert!(
        !db.exists(),
        "an event escaped inline into {}",
        db.display()
    );
}

/// Another test of the same binary uses a real broker on purpose while a
/// fake is alive on another thread: through an explicit client it reaches
/// its broker; a plain `queue!` in its worker tasks fails loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_client_beside_a_fake_reaches_its_own_broker() {
    let db = default_db();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let other_test = std::thread::spawn(move || {
        let _fake = testing::fake();
        ready_tx.send(()).expect("ready");
        let _ = hold_rx.recv();
    });
    ready_rx.recv().expect("the other test's fake is alive");

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("real.db").display());
    let client = Client::connect(&url).await.expect("client");
    let c = client.clone();
    tokio::spawn(async move {
        c.send(QueueRequest::new("ping").param("n", 1)).await?;
        c.scope(async { queue!(ping, n = 2).await }).await
    })
    .await
    .expect("task")
    .expect("queued on the real broker");
    assert_outside(
        tokio::spawn(async { queue!(ping, n = 3).await })
            .await
            .expect("task"),
    );
    hold_tx.send(()).expect("release");
    other_test.join().expect("other test");

    let depth = client.broker().depth("low").await.expect("depth");
    assert_eq!(depth.waiting, 2, "{depth:?}");
    assert!(!db.exists(), "an event reached {}", db.display());
}
