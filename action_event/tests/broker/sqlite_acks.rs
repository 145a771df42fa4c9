//! Acks riding on claims (SQLite): while a poller works through a backlog,
//! an ack waits up to `ack_linger` for the next claim, whose transaction
//! deletes its row; an ack returns only once that committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use action_event::broker::Broker;
use action_event::broker::sqlite::SqliteBroker;

use crate::test_support::{number_of, publish_numbered, qs, sqlite_url as url};

const NOW: Duration = Duration::ZERO;

fn rows(dir: &tempfile::TempDir) -> i64 {
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).expect("open");
    conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .expect("count")
}

/// With a linger far longer than the test, an ack taken during a backlog
/// commits with the next claim (and not before); a take that finds nothing
/// commits the acks waiting; once the backlog is over, an ack commits at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_commits_with_the_next_claim() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(
        SqliteBroker::open(&url(&dir, "?batch=2&ack_linger=20s"))
            .await
            .expect("open"),
    );
    publish_numbered(&*b, "q", 4).await;
    let q = qs(&["q"]);
    let d0 = b.take(&q, NOW).await.unwrap().expect("claims 0 and 1");
    let d1 = b.take(&q, NOW).await.unwrap().expect("1, claimed ahead");
    assert_eq!((number_of(&d0), number_of(&d1)), (0, 1));

    let ack0 = tokio::spawn({
        let b = b.clone();
        async move { b.ack(&d0).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ack0.is_finished(), "the ack waits for the next claim");
    assert_eq!(rows(&dir), 4, "nothing deleted before the claim");
    let d2 = b.take(&q, NOW).await.unwrap().expect("claims 2 and 3");
    assert_eq!(number_of(&d2), 2);
    tokio::time::timeout(Duration::from_secs(5), ack0)
        .await
        .expect("the claim committed the ack")
        .unwrap()
        .expect("ack ok");
    assert_eq!(rows(&dir), 3);

    // Handed out from the events claimed ahead: no claim, the ack waits.
    let d3 = b.take(&q, NOW).await.unwrap().expect("3, claimed ahead");
    let ack1 = tokio::spawn({
        let b = b.clone();
        async move { b.ack(&d1).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ack1.is_finished());
    // The next take finds nothing: its transaction commits the waiting ack.
    assert!(b.take(&q, NOW).await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(5), ack1)
        .await
        .expect("the empty take committed the ack")
        .unwrap()
        .expect("ack ok");
    assert_eq!(rows(&dir), 2);

    // The backlog is over: acks commit at once, not after the linger.
    let started = Instant::now();
    b.ack(&d2).await.unwrap();
    b.ack(&d3).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rows(&dir), 0);
}

/// An ack that no claim carries commits by itself once its linger ends,
/// together with the acks that joined it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_ack_commits_by_itself_when_no_claim_comes() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(
        SqliteBroker::open(&url(&dir, "?batch=3&ack_linger=400ms"))
            .await
            .expect("open"),
    );
    publish_numbered(&*b, "q", 3).await;
    let q = qs(&["q"]);
    let mut acks = Vec::new();
    let started = Instant::now();
    for _ in 0..3 {
        let d = b.take(&q, NOW).await.unwrap().expect("taken");
        let b = b.clone();
        acks.push(tokio::spawn(async move { b.ack(&d).await }));
    }
    for a in acks {
        a.await.unwrap().expect("ack ok");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(10),
        "acks returned after {took:?}, expected after the 400ms linger"
    );
    assert_eq!(rows(&dir), 0);
}
