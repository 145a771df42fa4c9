//! What only the SQLite broker does, against a real database file in a
//! temporary directory: leases and their heartbeat, batch claims (events
//! claimed ahead), group commit, write locks held elsewhere, URL options,
//! the schema and its query plans. What every backend does is in
//! `contract` (`contract::sqlite::*`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use action_event::broker::sqlite::{HOT_QUERIES, SCHEMA_VERSION, SqliteBroker};
use action_event::broker::{Broker, DeadFilter};
use action_event::{Envelope, Error};
use serde_json::json;

use crate::test_support::{
    dead_of, env_of, number_of, numbered, publish_numbered, qs, sqlite_url as url,
};

const NOW: Duration = Duration::ZERO;

async fn open(dir: &tempfile::TempDir, opts: &str) -> SqliteBroker {
    SqliteBroker::open(&url(dir, opts)).await.expect("open")
}

/// Takes and acks until nothing is ready: (queue, number) in take order.
async fn drain_numbered(b: &SqliteBroker, queues: &[String]) -> Vec<(String, u64)> {
    crate::test_support::drain_numbered(b, queues, NOW).await
}

/// The URL names its scheme (and the file).
#[tokio::test]
async fn url_is_the_sqlite_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    assert!(b.url().starts_with("sqlite://"));
    assert!(b.url().contains("events.db"), "{}", b.url());
}

/// Concurrent publishes are committed together (group commit); each is
/// stored once, a repeated event id too, and each returns after its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_each_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(open(&dir, "").await);
    let same = Envelope::new("e", "high", json!({ "same": true }));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let b = Arc::clone(&b);
        let env = if i % 10 == 0 {
            same.clone()
        } else {
            Envelope::new("e", "high", json!({ "i": i }))
        };
        tasks.push(tokio::spawn(async move { b.publish(&env).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(b.depth("high").await.unwrap().waiting, 181);
    let mut ids = HashSet::new();
    while let Some(d) = b.take(&qs(&["high"]), NOW).await.unwrap() {
        assert!(ids.insert(env_of(&d).id), "taken twice");
        b.ack(&d).await.unwrap();
    }
    assert_eq!(ids.len(), 181);
    assert!(ids.contains(&same.id));
}

/// Operations run on the caller's thread unless SQLite would wait for a
/// lock; then they wait on the blocking pool, and the runtime thread keeps
/// running other tasks (this runtime has only one thread).
#[tokio::test]
async fn a_write_lock_held_elsewhere_is_waited_for_off_the_runtime_thread() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let path = dir.path().join("events.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().unwrap();
    });
    locked_rx.recv().unwrap();
    let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = {
        let ticks = Arc::clone(&ticks);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    b.publish(&Envelope::new("e", "high", json!({})))
        .await
        .unwrap();
    let waited = started.elapsed();
    ticker.abort();
    holder.join().unwrap();
    assert!(
        waited >= Duration::from_millis(250),
        "did not wait for the lock: {waited:?}"
    );
    let ticks = ticks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ticks >= 10,
        "the runtime thread was blocked: {ticks} ticks in {waited:?}"
    );
    let d = b
        .take(&qs(&["high"]), NOW)
        .await
        .unwrap()
        .expect("published");
    b.ack(&d).await.unwrap();
    assert_eq!(b.depth("high").await.unwrap().waiting, 0);
}

#[tokio::test]
async fn lapsed_lease_redelivers_and_the_stale_ack_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "?lease=1s").await;
    let b = open(&dir, "?lease=30s&poll=20ms").await;
    let env = Envelope::new("e", "high", json!({}));
    a.publish(&env).await.unwrap();

    let d_a = a
        .take(&qs(&["high"]), NOW)
        .await
        .unwrap()
        .expect("taken by a");
    let taken = Instant::now();
    // The poller holding it dies: its heartbeat stops with it.
    drop(a);

    let d_b = b
        .take(&qs(&["high"]), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("redelivered to b");
    let after = taken.elapsed();
    assert!(after >= Duration::from_millis(900), "too early: {after:?}");
    assert!(after < Duration::from_secs(3), "too late: {after:?}");
    assert!(d_b.redelivered);
    assert_eq!(env_of(&d_b).id, env.id);

    // A comes back (same file, restarted process) and acks its stale delivery:
    // b's claim is untouched.
    let a_again = open(&dir, "?lease=1s").await;
    a_again.ack(&d_a).await.unwrap();
    a_again.release(&d_a).await.unwrap();
    a_again.dead(&d_a, &dead_of(&d_a, "stale")).await.unwrap();
    a_again
        .retry(&d_a, &env_of(&d_a), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        a_again
            .dead_list(&DeadFilter::default())
            .await
            .unwrap()
            .is_empty(),
        "a stale dead() must not dead-letter"
    );
    // Still held by b: not visible to anyone.
    assert!(a_again.take(&qs(&["high"]), NOW).await.unwrap().is_none());
    b.ack(&d_b).await.unwrap();
    assert_eq!(b.depth("high").await.unwrap().waiting, 0);
    assert!(a_again.take(&qs(&["high"]), NOW).await.unwrap().is_none());
}

#[tokio::test]
async fn heartbeat_keeps_a_held_event_past_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "?lease=600ms").await;
    let b = open(&dir, "?poll=20ms").await;
    a.publish(&Envelope::new("slow", "high", json!({})))
        .await
        .unwrap();
    let d = a.take(&qs(&["high"]), NOW).await.unwrap().expect("taken");
    // Four leases long: b never sees it while a lives.
    assert!(
        b.take(&qs(&["high"]), Duration::from_millis(2_400))
            .await
            .unwrap()
            .is_none()
    );
    a.ack(&d).await.unwrap();
    assert!(b.take(&qs(&["high"]), NOW).await.unwrap().is_none());
}

/// A poller whose ack/retry/dead keeps failing gives up on the event (it
/// logs "it will run again"): the heartbeat must stop extending its lease,
/// or the event would stay invisible for as long as that poller lives.
#[tokio::test]
async fn a_failed_settle_lets_the_lease_lapse_so_the_event_runs_again() {
    for what in ["ack", "retry", "dead", "release"] {
        let dir = tempfile::tempdir().unwrap();
        let a = open(&dir, "?lease=600ms&busy_timeout=50ms").await;
        let b = open(&dir, "?poll=20ms").await;
        a.publish(&Envelope::new("e", "high", json!({})))
            .await
            .unwrap();
        let d = a.take(&qs(&["high"]), NOW).await.unwrap().expect("taken");
        // Another process holds the write lock for longer than busy_timeout.
        let blocker = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let r = match what {
            "ack" => a.ack(&d).await,
            "retry" => a.retry(&d, &env_of(&d), Duration::ZERO).await,
            "dead" => a.dead(&d, &dead_of(&d, "x")).await,
            _ => a.release(&d).await,
        };
        let err = r.expect_err("the file is locked");
        assert!(err.to_string().contains("locked"), "{what}: {err}");
        blocker.execute_batch("COMMIT").unwrap();
        // `a` lives on; the event comes back once its lease lapses.
        let started = Instant::now();
        let d2 = b
            .take(&qs(&["high"]), Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: still held after {:?}", started.elapsed()));
        assert!(d2.redelivered);
        assert_eq!(env_of(&d2).id, env_of(&d).id);
        b.ack(&d2).await.unwrap();
        drop(a);
    }
}

#[tokio::test]
async fn duplicate_publish_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let env = Envelope::new("e", "high", json!({}));
    b.publish(&env).await.unwrap();
    b.publish(&env).await.unwrap();
    assert_eq!(b.depth("high").await.unwrap().waiting, 1);
    let d = b.take(&qs(&["high"]), NOW).await.unwrap().expect("taken");
    // Published again while held: still one.
    b.publish(&env).await.unwrap();
    b.ack(&d).await.unwrap();
    assert!(b.take(&qs(&["high"]), NOW).await.unwrap().is_none());
}

#[tokio::test]
async fn depth_counts_waiting_and_oldest_age() {
    let dir = tempfile::tempdir().unwrap();
    // One claim, one event: the other two stay waiting.
    let b = open(&dir, "?batch=1").await;
    for _ in 0..3 {
        b.publish(&Envelope::new("e", "low", json!({})))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _held = b.take(&qs(&["low"]), NOW).await.unwrap().expect("taken");
    let depth = b.depth("low").await.unwrap();
    assert_eq!(depth.waiting, 2);
    assert_eq!(depth.scheduled, Some(0), "a held event is neither");
    assert!(depth.oldest_age.expect("an age") >= Duration::from_millis(50));
    assert_eq!(b.depth("nope").await.unwrap().waiting, 0);
}

#[tokio::test]
async fn bad_url_options_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (opts, name) in [
        ("?lease=soon", "lease"),
        ("?busy_timeout=-1", "busy_timeout"),
        ("?poll=0ms", "poll"),
        ("?synchronous=off", "synchronous"),
        ("?batch=0", "batch"),
        ("?batch=many", "batch"),
        ("?frobnicate=1", "frobnicate"),
    ] {
        let u = url(&dir, opts);
        match SqliteBroker::open(&u).await {
            Err(e @ Error::BadUrl { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("`{name}`")), "{opts}: {msg}");
            }
            other => panic!("{opts}: expected BadUrl, got {other:?}"),
        }
    }
    assert!(matches!(
        SqliteBroker::open("sqlite://").await,
        Err(Error::BadUrl { .. })
    ));
    // Good options are accepted.
    open(
        &dir,
        "?lease=45s&synchronous=full&busy_timeout=2s&poll=250ms&batch=100",
    )
    .await;
}

#[tokio::test]
async fn names_a_missing_directory_and_a_bad_path() {
    let dir = tempfile::tempdir().unwrap();
    // A missing directory is not created: the error names it and the fix.
    let nested = dir.path().join("a/b/c/events.db");
    let u = format!("sqlite://{}", nested.display());
    let err = SqliteBroker::open(&u)
        .await
        .expect_err("a missing directory");
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.path().join("a/b/c").display().to_string()) && msg.contains("create it"),
        "{msg}"
    );
    assert!(!dir.path().join("a").exists());
    std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
    SqliteBroker::open(&u).await.expect("open nested");
    assert!(nested.exists());

    // A directory where the file should be.
    let u = format!("sqlite://{}", dir.path().display());
    let err = SqliteBroker::open(&u).await.expect_err("a directory");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    // A file where a parent directory should be.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let u = format!("sqlite://{}/events.db", file.display());
    let err = SqliteBroker::open(&u).await.expect_err("a file as parent");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn schema_version_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(open(&dir, "").await);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    // Reopening a current file is fine and keeps its rows.
    let b = open(&dir, "").await;
    b.publish(&Envelope::new("e", "high", json!({})))
        .await
        .unwrap();
    drop(b);
    let b = open(&dir, "").await;
    assert_eq!(b.depth("high").await.unwrap().waiting, 1);
    drop(b);

    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = SqliteBroker::open(&url(&dir, ""))
        .await
        .expect_err("newer schema");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
        "{msg}"
    );
    assert!(msg.contains("newer"), "{msg}");
}

#[tokio::test]
async fn hot_queries_search_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    // Some rows, so the plan is not the empty-table one.
    for i in 0..200 {
        b.publish(&Envelope::new("e", ["high", "low"][i % 2], json!({})))
            .await
            .unwrap();
    }
    drop(b);
    let conn = rusqlite::Connection::open(dir.path().join("events.db")).unwrap();
    conn.execute_batch("ANALYZE").unwrap();
    for (name, sql) in HOT_QUERIES {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(
                rusqlite::params_from_iter(vec![
                    rusqlite::types::Value::Null;
                    stmt.parameter_count()
                ]),
                |r| r.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        eprintln!("{name}: {plan:?}");
        for step in &plan {
            assert!(
                !step.starts_with("SCAN"),
                "{name}: `{step}` scans (plan: {plan:?})"
            );
            assert!(
                !step.contains("TEMP B-TREE"),
                "{name}: `{step}` sorts (plan: {plan:?})"
            );
        }
        if *name == "claim" || *name == "depth" {
            assert!(
                plan.iter()
                    .any(|s| s.starts_with("SEARCH events USING") && s.contains("events_ready")),
                "{name}: not a search of events_ready: {plan:?}"
            );
        }
    }
}

/// Acks waiting for the connection together are committed in one
/// transaction: every one of them lands, and a stale ack among them (its
/// lease lapsed and another poller holds the event) changes nothing of that
/// event and does not fail the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_are_committed_together_and_a_stale_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(open(&dir, "?lease=1s").await);
    let b = open(&dir, "?poll=20ms").await;
    a.publish(&Envelope::new("e", "stale", json!({})))
        .await
        .unwrap();
    let stale = a.take(&qs(&["stale"]), NOW).await.unwrap().expect("taken");
    // Its poller dies (the heartbeat stops with it); b takes the event once
    // the lease lapsed, and a comes back with its stale delivery.
    drop(a);
    let a = Arc::new(open(&dir, "?lease=30s").await);
    let held_by_b = b
        .take(&qs(&["stale"]), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("redelivered to b");
    for n in 0..300 {
        a.publish(&Envelope::new("e", "many", json!({ "n": n })))
            .await
            .unwrap();
    }
    let mut taken = Vec::new();
    while let Some(d) = a.take(&qs(&["many"]), NOW).await.unwrap() {
        taken.push(d);
    }
    assert_eq!(taken.len(), 300);
    taken.push(stale);
    let tasks: Vec<_> = taken
        .into_iter()
        .map(|d| {
            let a = a.clone();
            tokio::spawn(async move { a.ack(&d).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every ack succeeds");
    }
    assert_eq!(rusqlite_count(&dir), 1, "only b's event is left");
    // The stale ack did not delete b's claim: b can still settle it.
    assert!(a.take(&qs(&["stale"]), NOW).await.unwrap().is_none());
    b.ack(&held_by_b).await.unwrap();
    assert_eq!(rusqlite_count(&dir), 0, "no rows left");
}

fn rusqlite_count(dir: &tempfile::TempDir) -> i64 {
    let path = dir.path().join("events.db");
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .expect("count")
}

/// A claim takes up to `batch` events; the ones claimed ahead are taken
/// from no other broker, counted neither waiting nor scheduled, handed out
/// in order, and go back as they were when their broker is dropped.
#[tokio::test]
async fn events_claimed_ahead_are_held_then_given_back_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "?batch=4").await;
    publish_numbered(&a, "low", 6).await;
    let d0 = a.take(&qs(&["low"]), NOW).await.unwrap().expect("taken");
    assert_eq!(number_of(&d0), 0);
    let depth = a.depth("low").await.unwrap();
    assert_eq!(
        (depth.waiting, depth.scheduled),
        (2, Some(0)),
        "1 in hand and 3 claimed ahead are neither waiting nor scheduled"
    );
    let b = open(&dir, "?batch=1").await;
    let e4 = b.take(&qs(&["low"]), NOW).await.unwrap().expect("taken");
    assert_eq!(number_of(&e4), 4, "b does not get what a claimed ahead");
    let d1 = a.take(&qs(&["low"]), NOW).await.unwrap().expect("taken");
    assert_eq!(number_of(&d1), 1);
    assert!(!d1.redelivered);
    a.ack(&d0).await.unwrap();
    a.ack(&d1).await.unwrap();
    drop(a);
    // 2 and 3 went back, ahead of 5 as before, not counted as delivered.
    assert_eq!(
        drain_numbered(&b, &qs(&["low"])).await,
        numbered("low", &[2, 3, 5])
    );
    b.ack(&e4).await.unwrap();
    assert_eq!(b.depth("low").await.unwrap().waiting, 0);
}

/// An event claimed ahead is handed out only while no queue listed before
/// its own has a ready event.
#[tokio::test]
async fn strict_priority_holds_for_events_claimed_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    publish_numbered(&b, "medium", 4).await;
    let queues = qs(&["high", "medium"]);
    let m0 = b.take(&queues, NOW).await.unwrap().expect("taken");
    assert_eq!((m0.queue.as_str(), number_of(&m0)), ("medium", 0));
    publish_numbered(&b, "high", 2).await;
    let mut want = numbered("high", &[0, 1]);
    want.extend(numbered("medium", &[1, 2, 3]));
    assert_eq!(drain_numbered(&b, &queues).await, want);
    // A take that does not ask for a claimed-ahead event's queue never gets it.
    publish_numbered(&b, "medium", 3).await;
    let m = b.take(&queues, NOW).await.unwrap().expect("taken");
    assert!(b.take(&qs(&["high"]), NOW).await.unwrap().is_none());
    b.ack(&m).await.unwrap();
    // `give_back` frees the two claimed ahead for another broker at once.
    let other = open(&dir, "?batch=1").await;
    assert!(other.take(&queues, NOW).await.unwrap().is_none());
    b.give_back().await.unwrap();
    assert_eq!(
        drain_numbered(&other, &queues).await,
        numbered("medium", &[1, 2])
    );
}

/// An event claimed ahead and not started within a second goes back (looked
/// for every 0.5 s): a broker whose poller is busy keeps it from nobody. The
/// 3 s lease is renewed every second, with room for a loaded machine.
#[tokio::test]
async fn events_claimed_ahead_and_not_started_go_back_at_the_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "?lease=3s&batch=8").await;
    publish_numbered(&a, "low", 5).await;
    let d0 = a.take(&qs(&["low"]), NOW).await.unwrap().expect("taken");
    let b = open(&dir, "?batch=1").await;
    assert!(b.take(&qs(&["low"]), NOW).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        drain_numbered(&b, &qs(&["low"])).await,
        numbered("low", &[1, 2, 3, 4])
    );
    assert!(
        a.take(&qs(&["low"]), NOW).await.unwrap().is_none(),
        "a no longer hands them out"
    );
    // The event in hand was kept by the heartbeat all along.
    a.ack(&d0).await.unwrap();
    assert_eq!(a.depth("low").await.unwrap().waiting, 0);
}

/// A batch larger than one multi-row INSERT (256 rows), with a repeated
/// event id inside it and then sent again whole: every event stored once,
/// in the batch's order, with the bytes it was sent with.
#[tokio::test]
async fn a_large_batch_sent_twice_is_stored_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let mut batch: Vec<Envelope> = (0..600)
        .map(|i| Envelope::new("e", "low", json!({ "i": i })))
        .collect();
    // Rows 300 and 599 repeat rows 10 and 299 (inside one statement, and
    // across statements).
    batch[300] = batch[10].clone();
    batch[599] = batch[299].clone();
    b.publish_many(&batch).await.expect("publish_many");
    assert_eq!(b.depth("low").await.expect("depth").waiting, 598);
    b.publish_many(&batch).await.expect("publish_many again");
    assert_eq!(b.depth("low").await.expect("depth").waiting, 598);

    let mut seen = HashSet::new();
    let want: Vec<&Envelope> = batch.iter().filter(|e| seen.insert(e.id)).collect();
    let mut got = Vec::new();
    while let Some(d) = b.take(&qs(&["low"]), NOW).await.expect("take") {
        got.push(env_of(&d));
        b.ack(&d).await.expect("ack");
    }
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
}

/// The WAL is checkpointed after the writes that fill it, not inside them
/// (the broker's WAL hook replaces SQLite's automatic checkpoint): after
/// 40 batches of 2,000 events (about 20,000 WAL pages written in all) the
/// `-wal` file stays near the size of a few batches, because each
/// checkpoint lets the next write start the log again from its beginning.
/// Without checkpoints it would hold every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_after_big_writes() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let wal = dir.path().join("events.db-wal");
    let mut largest = 0;
    let mut written = 0u64;
    for round in 0..40 {
        let mut batch = (0..2_000).map(|i| {
            Ok(Envelope::new(
                "e",
                "low",
                json!({ "round": round, "i": i, "pad": "x".repeat(200) }),
            ))
        });
        b.publish_checked(&mut batch)
            .await
            .expect("publish_checked");
        written += 2_000;
        // Give the checkpoint task its turn, as an app's next await would.
        tokio::time::sleep(Duration::from_millis(20)).await;
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    assert_eq!(b.depth("low").await.expect("depth").waiting, written);
    let db = std::fs::metadata(dir.path().join("events.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        largest < db / 4,
        "the WAL grew to {largest} bytes while the database is {db} bytes: not checkpointed"
    );
}
