//! The SQLite broker against a real database file in a temporary directory.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use action_event::broker::sqlite::{HOT_QUERIES, SCHEMA_VERSION, SqliteBroker};
use action_event::broker::{Broker, DeadEvent, DeadFilter, Delivery};
use action_event::envelope::{AttemptError, now_ms};
use action_event::{Envelope, Error};
use serde_json::json;

const NOW: Duration = Duration::ZERO;

fn url(dir: &tempfile::TempDir, opts: &str) -> String {
    let path = dir.path().join("events.db");
    format!("sqlite://{}{opts}", path.display())
}

async fn open(dir: &tempfile::TempDir, opts: &str) -> SqliteBroker {
    SqliteBroker::open(&url(dir, opts)).await.expect("open")
}

fn qs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn env_of(d: &Delivery) -> Envelope {
    Envelope::from_slice(&d.body).expect("envelope")
}

fn dead_of(d: &Delivery, reason: &str) -> DeadEvent {
    let env = env_of(d);
    DeadEvent {
        id: env.id.to_string(),
        name: Some(env.name.clone()),
        queue: d.queue.clone(),
        body: String::from_utf8(d.body.clone()).expect("utf8"),
        attempts: env.attempt,
        errors: vec![AttemptError {
            attempt: env.attempt,
            at_ms: now_ms(),
            message: reason.into(),
        }],
        reason: reason.into(),
        died_at_ms: now_ms(),
    }
}

#[tokio::test]
async fn publish_take_ack_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    assert!(b.url().starts_with("sqlite://"));
    let env = Envelope::new("hello_world", "high", json!({"name": "world"}));
    b.publish(&env).await.unwrap();
    assert_eq!(b.depth("high").await.unwrap().waiting, 1);

    let d = b
        .take(&qs(&["high"]), NOW)
        .await
        .unwrap()
        .expect("an event");
    assert_eq!(d.queue, "high");
    assert!(!d.redelivered);
    assert_eq!(env_of(&d), env);
    // Held: not waiting, not taken again.
    assert_eq!(b.depth("high").await.unwrap().waiting, 0);
    assert!(b.take(&qs(&["high"]), NOW).await.unwrap().is_none());

    b.ack(&d).await.unwrap();
    assert!(b.take(&qs(&["high"]), NOW).await.unwrap().is_none());
    let depth = b.depth("high").await.unwrap();
    assert_eq!(depth.waiting, 0);
    assert_eq!(depth.oldest_age, None);
}

#[tokio::test]
async fn take_waits_then_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "?poll=20ms").await;
    let start = Instant::now();
    assert!(
        b.take(&qs(&["high"]), Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn take_sees_an_event_published_while_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(open(&dir, "").await);
    let b = open(&dir, "").await;
    let waiter = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.take(&qs(&["low"]), Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.publish(&Envelope::new("e", "low", json!({})))
        .await
        .unwrap();
    let d = waiter.await.unwrap().unwrap().expect("the event");
    a.ack(&d).await.unwrap();
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
async fn strict_priority() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let mut published = Vec::new();
    for i in 0..20 {
        for q in [["low", "high", "medium"], ["medium", "low", "high"]][i % 2] {
            let env = Envelope::new("e", q, json!({ "i": i }));
            b.publish(&env).await.unwrap();
            published.push(env);
        }
    }
    let queues = qs(&["high", "medium", "low"]);
    let mut order = Vec::new();
    while let Some(d) = b.take(&queues, NOW).await.unwrap() {
        order.push(env_of(&d));
        b.ack(&d).await.unwrap();
    }
    assert_eq!(order.len(), 60);
    for (i, q) in ["high", "medium", "low"].iter().enumerate() {
        let got: Vec<_> = order[i * 20..(i + 1) * 20].iter().collect();
        assert!(got.iter().all(|e| e.queue == *q), "slot {i} is not all {q}");
        // FIFO within a queue.
        let want: Vec<_> = published.iter().filter(|e| e.queue == *q).collect();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_take_every_event_exactly_once() {
    const N: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(open(&dir, "").await);
    let b = Arc::new(open(&dir, "").await);
    let mut ids = HashSet::new();
    for i in 0..N {
        let env = Envelope::new("e", ["high", "low"][i % 2], json!({ "i": i }));
        ids.insert(env.id.to_string());
        (if i % 2 == 0 { &a } else { &b })
            .publish(&env)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for broker in [&a, &b] {
        for _ in 0..4 {
            let broker = Arc::clone(broker);
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let queues = qs(&["high", "low"]);
                while let Some(d) = broker.take(&queues, NOW).await.unwrap() {
                    assert!(!d.redelivered);
                    got.push(env_of(&d).id.to_string());
                    broker.ack(&d).await.unwrap();
                }
                got
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for id in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "event {id} taken twice");
        }
    }
    assert_eq!(total, N);
    assert_eq!(seen, ids);
    assert_eq!(a.depth("high").await.unwrap().waiting, 0);
    assert_eq!(a.depth("low").await.unwrap().waiting, 0);
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
async fn delayed_publish_is_not_taken_early() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "?poll=20ms").await;
    let mut env = Envelope::new("later", "high", json!({}));
    env.run_at_ms = Some(now_ms() + 1_000);
    b.publish(&env).await.unwrap();
    let start = Instant::now();
    // Not ready yet: scheduled, not waiting.
    let depth = b.depth("high").await.unwrap();
    assert_eq!((depth.waiting, depth.scheduled), (0, Some(1)));
    assert!(b.take(&qs(&["high"]), NOW).await.unwrap().is_none());
    let d = b
        .take(&qs(&["high"]), Duration::from_secs(5))
        .await
        .unwrap()
        .expect("taken when due");
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(env_of(&d).id, env.id);
    b.ack(&d).await.unwrap();
}

#[tokio::test]
async fn retry_with_delay() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "?poll=20ms").await;
    b.publish(&Envelope::new("flaky", "medium", json!({"x": 1})))
        .await
        .unwrap();
    let q = qs(&["medium"]);
    let d = b.take(&q, NOW).await.unwrap().expect("taken");
    let mut next = env_of(&d);
    next.errors.push(AttemptError {
        attempt: 1,
        at_ms: now_ms(),
        message: "boom".into(),
    });
    next.attempt = 2;
    let start = Instant::now();
    b.retry(&d, &next, Duration::from_millis(800))
        .await
        .unwrap();
    assert!(b.take(&q, NOW).await.unwrap().is_none());
    let d2 = b
        .take(&q, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("retried");
    assert!(start.elapsed() >= Duration::from_millis(700));
    assert_eq!(env_of(&d2), next);
    // A retry is a new attempt, not a redelivery.
    assert!(!d2.redelivered);
    b.ack(&d2).await.unwrap();
}

#[tokio::test]
async fn release_gives_it_back_now() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let env = Envelope::new("e", "low", json!({}));
    b.publish(&env).await.unwrap();
    let q = qs(&["low"]);
    let d = b.take(&q, NOW).await.unwrap().expect("taken");
    b.release(&d).await.unwrap();
    let d2 = b.take(&q, NOW).await.unwrap().expect("taken again");
    assert!(d2.redelivered);
    assert_eq!(env_of(&d2), env);
    b.ack(&d2).await.unwrap();
}

#[tokio::test]
async fn dead_letters_list_retry_purge() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let mut envs = Vec::new();
    for (name, queue) in [("a", "high"), ("b", "high"), ("a", "low"), ("c", "low")] {
        let mut env = Envelope::new(name, queue, json!({ "n": name }));
        env.attempt = 3;
        b.publish(&env).await.unwrap();
        envs.push(env);
    }
    let q = qs(&["high", "low"]);
    for _ in 0..envs.len() {
        let d = b.take(&q, NOW).await.unwrap().expect("taken");
        b.dead(&d, &dead_of(&d, "boom")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b.take(&q, NOW).await.unwrap().is_none());

    let all = b.dead_list(&DeadFilter::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    let ids: Vec<_> = all.iter().map(|d| d.id.clone()).collect();
    let want: Vec<_> = envs.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, want, "oldest first");
    assert_eq!(all[0].reason, "boom");
    assert_eq!(all[0].attempts, 3);
    assert_eq!(all[0].errors.len(), 1);
    assert_eq!(all[0].name.as_deref(), Some("a"));

    let high = DeadFilter {
        queue: Some("high".into()),
        ..Default::default()
    };
    assert_eq!(b.dead_list(&high).await.unwrap().len(), 2);
    let named_a = DeadFilter {
        event: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(b.dead_list(&named_a).await.unwrap().len(), 2);
    let before_third = DeadFilter {
        died_before_ms: Some(all[2].died_at_ms),
        ..Default::default()
    };
    assert_eq!(b.dead_list(&before_third).await.unwrap().len(), 2);

    // Unknown ids.
    let missing = "0190b1c6-0000-7000-8000-000000000000";
    assert!(matches!(
        b.dead_retry(Some(missing), &DeadFilter::default()).await,
        Err(Error::NoSuchDeadEvent(id)) if id == missing
    ));
    assert!(matches!(
        b.dead_purge(Some(missing), &DeadFilter::default()).await,
        Err(Error::NoSuchDeadEvent(_))
    ));

    // Retry one by id: a fresh first attempt, same id and params.
    assert_eq!(
        b.dead_retry(Some(&ids[0]), &DeadFilter::default())
            .await
            .unwrap(),
        1
    );
    let d = b.take(&q, NOW).await.unwrap().expect("retried");
    let fresh = env_of(&d);
    assert_eq!(fresh.id, envs[0].id);
    assert_eq!(fresh.params, envs[0].params);
    assert_eq!(fresh.attempt, 1);
    assert!(fresh.errors.is_empty());
    assert!(!d.redelivered);
    b.ack(&d).await.unwrap();

    // Retry by filter: the remaining high one.
    assert_eq!(b.dead_retry(None, &high).await.unwrap(), 1);
    let d = b.take(&q, NOW).await.unwrap().expect("retried");
    assert_eq!(env_of(&d).id, envs[1].id);
    b.ack(&d).await.unwrap();

    // Purge by filter, then by id.
    let c = DeadFilter {
        event: Some("c".into()),
        ..Default::default()
    };
    assert_eq!(b.dead_purge(None, &c).await.unwrap(), 1);
    assert_eq!(
        b.dead_purge(Some(&ids[2]), &DeadFilter::default())
            .await
            .unwrap(),
        1
    );
    assert!(
        b.dead_list(&DeadFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn dead_retry_skips_a_body_that_is_not_an_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, "").await;
    let q = qs(&["high"]);
    for _ in 0..2 {
        b.publish(&Envelope::new("e", "high", json!({})))
            .await
            .unwrap();
    }
    let d = b.take(&q, NOW).await.unwrap().expect("taken");
    let mut garbage = dead_of(&d, "unreadable");
    garbage.body = "not json at all".into();
    b.dead(&d, &garbage).await.unwrap();
    let d = b.take(&q, NOW).await.unwrap().expect("taken");
    b.dead(&d, &dead_of(&d, "boom")).await.unwrap();

    assert_eq!(b.dead_retry(None, &DeadFilter::default()).await.unwrap(), 1);
    let left = b.dead_list(&DeadFilter::default()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body, "not json at all");
    assert_eq!(
        b.dead_retry(Some(&left[0].id), &DeadFilter::default())
            .await
            .unwrap(),
        0
    );
    let d = b.take(&q, NOW).await.unwrap().expect("the valid one");
    b.ack(&d).await.unwrap();
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

/// Publishes `n` events to `queue`, numbered in `params.i`.
async fn publish_numbered(b: &SqliteBroker, queue: &str, n: u64) {
    for i in 0..n {
        b.publish(&Envelope::new("e", queue, json!({ "i": i })))
            .await
            .unwrap();
    }
}

fn number_of(d: &Delivery) -> u64 {
    env_of(d).params["i"].as_u64().expect("numbered")
}

/// Takes and acks until nothing is ready: (queue, number) in take order.
/// None of them may be a redelivery.
async fn drain_numbered(b: &SqliteBroker, queues: &[String]) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while let Some(d) = b.take(queues, NOW).await.unwrap() {
        assert!(!d.redelivered, "{}", number_of(&d));
        got.push((d.queue.clone(), number_of(&d)));
        b.ack(&d).await.unwrap();
    }
    got
}

fn numbered(queue: &str, numbers: &[u64]) -> Vec<(String, u64)> {
    numbers.iter().map(|i| (queue.to_string(), *i)).collect()
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
