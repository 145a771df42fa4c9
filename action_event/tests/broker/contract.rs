//! The broker contract: what every backend does, written once as generic
//! functions over a [`Backend`] fixture and run against each backend by
//! `contract_suite!`. The test `contract::<backend>::<name>` runs
//! `<name>::<Fixture>()`; each test opens its own fresh place (file, queue
//! prefix), so they run in parallel.
//!
//! A new backend: implement `Backend` for its fixture (in `test_support`)
//! and add one line at the bottom, `contract_suite!(postgres, Postgres);`.
//! What only one backend does (SQLite leases and batch claims, RabbitMQ
//! prefetch and queue arguments, ...) is tested in that backend's module.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use action_event::broker::{Broker, DeadFilter};
use action_event::envelope::{AttemptError, now_ms};
use action_event::{Envelope, Error};
use serde_json::json;

#[allow(unused_imports)] // used by the suites `contract_suite!` writes
use crate::contract_checked::*;
use crate::test_support::*;

/// How long a take waits for an event that is ready (or due any moment).
const SOON: Duration = Duration::from_secs(5);

/// `contract_suite!(name, Fixture)`: the module `name` with one test per
/// contract function, each on a fresh `Fixture`. Tests listed under
/// `current_thread` need a take and the code after it to run with no other
/// task in between; the others get two worker threads.
macro_rules! contract_suite {
    ($backend:ident, $fixture:ty) => {
        contract_suite!(@tests $backend, $fixture,
            current_thread: [
                publish_take_ack,
                take_waits_then_gives_up,
                take_sees_an_event_published_while_waiting,
                strict_priority,
                strict_priority_with_backlog,
                delayed_publish_is_not_taken_early,
                retry_with_delay,
                release_gives_it_back_now,
                dead_letters_list_retry_purge,
                dead_retry_skips_a_body_that_is_not_an_envelope,
                events_taken_ahead_go_back_when_their_owner_closes,
                an_event_in_hand_comes_back_when_its_owner_is_lost,
                depth_counts_waiting_events,
                pause_and_resume_a_queue,
                a_pause_reaches_a_taker_that_holds_events_ahead,
                publish_many_stores_the_batch_in_order,
                publish_checked_stores_a_large_batch_in_order,
                publish_checked_stores_nothing_after_a_bad_envelope,
            ],
            multi_thread: [
                two_brokers_take_every_event_exactly_once,
                delays_do_not_block_each_other,
                retry_goes_through_the_same_delay_twice,
                concurrent_batches_and_single_publishes_all_arrive_once,
            ]
        );
    };
    (@tests $backend:ident, $fixture:ty,
        current_thread: [$($one:ident),* $(,)?],
        multi_thread: [$($multi:ident),* $(,)?]
    ) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $one() {
                    if let Some(f) = <$fixture as $crate::test_support::Backend>::new().await {
                        super::$one(f).await;
                    }
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $multi() {
                    if let Some(f) = <$fixture as $crate::test_support::Backend>::new().await {
                        super::$multi(f).await;
                    }
                }
            )*
        }
    };
}

contract_suite!(sqlite, crate::test_support::Sqlite);
contract_suite!(amqp, crate::test_support::Amqp);
contract_suite!(postgres, crate::test_support::Postgres);

/// Published, waiting, taken (and then held: neither waiting nor taken
/// again), acked (and then gone).
async fn publish_take_ack<F: Backend>(f: F) {
    let b = f.open().await;
    let env = Envelope::new("hello_world", "high", json!({"name": "world"}));
    b.publish(&env).await.expect("publish");
    assert_eq!(b.depth("high").await.expect("depth").waiting, 1);

    let d = b
        .take(&qs(&["high"]), SOON)
        .await
        .expect("take")
        .expect("an event");
    assert_eq!(d.queue, "high");
    assert!(!d.redelivered);
    assert_eq!(env_of(&d), env);
    // Held: not waiting, not taken again.
    assert_eq!(b.depth("high").await.expect("depth").waiting, 0);
    assert!(
        b.take(&qs(&["high"]), F::NOTHING)
            .await
            .expect("take")
            .is_none()
    );

    b.ack(&d).await.expect("ack");
    assert!(
        b.take(&qs(&["high"]), F::NOTHING)
            .await
            .expect("take")
            .is_none()
    );
    let depth = b.depth("high").await.expect("depth");
    assert_eq!(depth.waiting, 0);
    assert_eq!(depth.oldest_age, None);
    f.clean(&b).await;
}

async fn take_waits_then_gives_up<F: Backend>(f: F) {
    let b = f.open().await;
    let start = Instant::now();
    assert!(
        b.take(&qs(&["high"]), Duration::from_millis(200))
            .await
            .expect("take")
            .is_none()
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    f.clean(&b).await;
}

/// A take waiting on one broker sees an event another broker publishes.
async fn take_sees_an_event_published_while_waiting<F: Backend>(f: F) {
    let a = Arc::new(f.open().await);
    let b = f.open().await;
    let waiter = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.take(&qs(&["low"]), Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let env = Envelope::new("e", "low", json!({}));
    b.publish(&env).await.expect("publish");
    let d = waiter
        .await
        .expect("task")
        .expect("take")
        .expect("the event");
    assert_eq!(env_of(&d).id, env.id);
    a.ack(&d).await.expect("ack");
    f.clean(&b).await;
}

/// One taker: every event of a queue listed earlier comes before any of a
/// queue listed later, whatever the publish order; FIFO within a queue.
async fn strict_priority<F: Backend>(f: F) {
    let b = f.open().await;
    let mut published = Vec::new();
    for i in 0..20 {
        for q in [["low", "high", "medium"], ["medium", "low", "high"]][i % 2] {
            let env = Envelope::new("e", q, json!({ "i": i }));
            b.publish(&env).await.expect("publish");
            published.push(env);
        }
    }
    let queues = qs(&["high", "medium", "low"]);
    let mut order = Vec::new();
    while let Some(d) = b.take(&queues, F::NOTHING).await.expect("take") {
        order.push(env_of(&d));
        b.ack(&d).await.expect("ack");
    }
    assert_eq!(order.len(), 60);
    for (i, q) in ["high", "medium", "low"].iter().enumerate() {
        let got: Vec<_> = order[i * 20..(i + 1) * 20].iter().collect();
        assert!(got.iter().all(|e| e.queue == *q), "slot {i} is not all {q}");
        // FIFO within a queue.
        let want: Vec<_> = published.iter().filter(|e| e.queue == *q).collect();
        assert_eq!(got, want);
    }
    f.clean(&b).await;
}

/// Takes `total` events from `queues` with `slots` concurrent tasks per
/// broker; returns the queue of each event in hand-out order.
pub async fn drain_in_order<B: Broker>(
    brokers: Vec<Arc<B>>,
    queues: &[&str],
    slots: usize,
    total: usize,
) -> Vec<String> {
    let order = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let taken = Arc::new(AtomicUsize::new(0));
    let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
    let mut tasks = Vec::new();
    for b in brokers {
        for _ in 0..slots {
            let (b, order, taken, queues) =
                (b.clone(), order.clone(), taken.clone(), queues.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while taken.load(Ordering::SeqCst) < total && Instant::now() < deadline {
                    if let Some(d) = b
                        .take(&queues, Duration::from_millis(200))
                        .await
                        .expect("take")
                    {
                        // Current-thread runtime: no other task runs between
                        // `take` returning and this push.
                        order.lock().expect("lock").push(d.queue.clone());
                        taken.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        b.ack(&d).await.expect("ack");
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    order.lock().expect("lock").clone()
}

/// No event of a later level is handed out after one of an earlier level
/// was (the order only ever goes down the levels).
pub fn assert_strict(order: &[String], levels: &[&str]) {
    let rank: HashMap<&str, usize> = levels.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let mut max_seen = 0;
    for (i, q) in order.iter().enumerate() {
        let r = rank[q.as_str()];
        assert!(
            r >= max_seen,
            "priority inversion at hand-out #{i}: `{q}` after a lower level (order around it: {:?})",
            &order[i.saturating_sub(5)..(i + 5).min(order.len())]
        );
        max_seen = r;
    }
}

/// 24 concurrent takers on a backlog of 900 in three queues: strict
/// priority still holds.
async fn strict_priority_with_backlog<F: Backend>(f: F) {
    let b = f.open().await;
    let mut envs = Vec::new();
    for q in ["low", "medium", "high"] {
        for n in 0..300 {
            envs.push(Envelope::new("test_event", q, json!({ "n": n })));
        }
    }
    publish_all(&b, &envs).await;
    let b = Arc::new(b);
    let order = drain_in_order(vec![b.clone()], &["high", "medium", "low"], 24, 900).await;
    assert_eq!(order.len(), 900);
    assert_strict(&order, &["high", "medium", "low"]);
    f.clean(&b).await;
}

async fn two_brokers_take_every_event_exactly_once<F: Backend>(f: F) {
    const N: usize = 2_000;
    let a = Arc::new(f.open().await);
    let b = Arc::new(f.open().await);
    let mut ids = HashSet::new();
    let mut envs = (Vec::new(), Vec::new());
    for i in 0..N {
        let env = Envelope::new("e", ["high", "low"][i % 2], json!({ "i": i }));
        ids.insert(env.id.to_string());
        if i % 2 == 0 { &mut envs.0 } else { &mut envs.1 }.push(env);
    }
    publish_all(&*a, &envs.0).await;
    publish_all(&*b, &envs.1).await;
    let mut tasks = Vec::new();
    for broker in [&a, &b] {
        for _ in 0..4 {
            let broker = Arc::clone(broker);
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let queues = qs(&["high", "low"]);
                while let Some(d) = broker.take(&queues, F::NOTHING).await.expect("take") {
                    assert!(!d.redelivered);
                    got.push(env_of(&d).id.to_string());
                    broker.ack(&d).await.expect("ack");
                }
                got
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for id in t.await.expect("task") {
            total += 1;
            assert!(seen.insert(id.clone()), "event {id} taken twice");
        }
    }
    assert_eq!(total, N);
    assert_eq!(seen, ids);
    assert_eq!(a.depth("high").await.expect("depth").waiting, 0);
    assert_eq!(a.depth("low").await.expect("depth").waiting, 0);
    f.clean(&a).await;
}

async fn delayed_publish_is_not_taken_early<F: Backend>(f: F) {
    let b = f.open().await;
    let mut env = Envelope::new("later", "high", json!({}));
    env.run_at_ms = Some(now_ms() + 1_000);
    b.publish(&env).await.expect("publish");
    let start = Instant::now();
    // Not ready yet: scheduled (where the backend counts those), not waiting.
    let depth = b.depth("high").await.expect("depth");
    assert_eq!(
        (depth.waiting, depth.scheduled),
        (0, F::SCHEDULED_COUNTED.then_some(1))
    );
    assert!(
        b.take(&qs(&["high"]), Duration::ZERO)
            .await
            .expect("take")
            .is_none()
    );
    let d = b
        .take(&qs(&["high"]), Duration::from_secs(5))
        .await
        .expect("take")
        .expect("taken when due");
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert_eq!(env_of(&d).id, env.id);
    b.ack(&d).await.expect("ack");
    f.clean(&b).await;
}

/// A +3 s event published first does not hold back a +1 s one; each is
/// taken at its time, within a second.
async fn delays_do_not_block_each_other<F: Backend>(f: F) {
    let b = f.open().await;
    let mut long = Envelope::new("test_event", "sched", json!({ "n": 3 }));
    long.run_at_ms = Some(now_ms() + 3_000);
    b.publish(&long).await.expect("publish +3s");
    let mut short = Envelope::new("test_event", "sched", json!({ "n": 1 }));
    short.run_at_ms = Some(now_ms() + 1_000);
    b.publish(&short).await.expect("publish +1s");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < deadline {
        if let Some(d) = b
            .take(&qs(&["sched"]), Duration::from_millis(500))
            .await
            .expect("take")
        {
            let at = now_ms();
            let e = env_of(&d);
            b.ack(&d).await.expect("ack");
            got.push((e.id, at, e.run_at_ms.expect("run_at")));
        }
    }
    assert_eq!(got.len(), 2, "both delayed events arrive");
    assert_eq!(got[0].0, short.id, "the +1s event comes first");
    for (id, at, run_at) in &got {
        assert!(at >= run_at, "{id} taken {} ms early", run_at - at);
        assert!(*at <= run_at + 1_000, "{id} taken {} ms late", at - run_at);
    }
    f.clean(&b).await;
}

/// `retry` with a delay: not back before it, back after it as the next
/// attempt (a new attempt, not a redelivery).
async fn retry_with_delay<F: Backend>(f: F) {
    let b = f.open().await;
    b.publish(&Envelope::new("flaky", "medium", json!({"x": 1})))
        .await
        .expect("publish");
    let q = qs(&["medium"]);
    let d = b.take(&q, SOON).await.expect("take").expect("taken");
    let mut next = env_of(&d);
    next.errors.push(AttemptError {
        attempt: 1,
        at_ms: now_ms(),
        message: "boom".into(),
    });
    next.attempt = 2;
    let start = Instant::now();
    let retried_at = now_ms();
    b.retry(&d, &next, Duration::from_millis(800))
        .await
        .expect("retry");
    assert!(b.take(&q, Duration::ZERO).await.expect("take").is_none());
    let d2 = b
        .take(&q, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("retried");
    assert!(start.elapsed() >= Duration::from_millis(700));
    // The backends differ in one field: RabbitMQ writes the time the retry
    // is due into `run_at_ms`, SQLite keeps the envelope as given (`None`).
    let mut got = env_of(&d2);
    assert_eq!(got.run_at_ms.is_some(), F::RETRY_SETS_RUN_AT, "{got:?}");
    if let Some(at) = got.run_at_ms {
        let due = retried_at + 800;
        assert!(at >= due && at < due + 1_000, "run_at_ms {at}, due {due}");
    }
    got.run_at_ms = next.run_at_ms;
    assert_eq!(got, next);
    // A retry is a new attempt, not a redelivery.
    assert!(!d2.redelivered);
    b.ack(&d2).await.expect("ack");
    f.clean(&b).await;
}

/// The same 1 s delay twice in a row: each retry waits its own second.
async fn retry_goes_through_the_same_delay_twice<F: Backend>(f: F) {
    let b = f.open().await;
    let q = qs(&["work"]);
    let first = Envelope::new("test_event", "work", json!({ "n": 7 }));
    b.publish(&first).await.expect("publish");
    let mut d = b.take(&q, SOON).await.expect("take").expect("event");
    for attempt in 2..=3u32 {
        let mut next = env_of(&d);
        next.attempt = attempt;
        let t0 = now_ms();
        b.retry(&d, &next, Duration::from_secs(1))
            .await
            .expect("retry");
        d = b
            .take(&q, Duration::from_secs(10))
            .await
            .expect("take")
            .unwrap_or_else(|| panic!("attempt {attempt} came back"));
        let waited = now_ms() - t0;
        let e = env_of(&d);
        assert_eq!(e.id, first.id);
        assert_eq!(e.attempt, attempt);
        assert!(waited >= 1_000, "attempt {attempt} only waited {waited} ms");
        assert!(waited < 3_000, "attempt {attempt} waited {waited} ms");
    }
    b.ack(&d).await.expect("ack");
    assert!(b.take(&q, F::NOTHING).await.expect("take").is_none());
    f.clean(&b).await;
}

/// `release` puts the event back at once, as a redelivery of the same event.
async fn release_gives_it_back_now<F: Backend>(f: F) {
    let b = f.open().await;
    let env = Envelope::new("e", "low", json!({}));
    b.publish(&env).await.expect("publish");
    let q = qs(&["low"]);
    let d = b.take(&q, SOON).await.expect("take").expect("taken");
    b.release(&d).await.expect("release");
    let d2 = b.take(&q, SOON).await.expect("take").expect("taken again");
    assert!(d2.redelivered);
    assert_eq!(env_of(&d2), env);
    b.ack(&d2).await.expect("ack");
    f.clean(&b).await;
}

async fn dead_letters_list_retry_purge<F: Backend>(f: F) {
    let b = f.open().await;
    let mut envs = Vec::new();
    for (name, queue) in [("a", "high"), ("b", "high"), ("a", "low"), ("c", "low")] {
        let mut env = Envelope::new(name, queue, json!({ "n": name }));
        env.attempt = 3;
        b.publish(&env).await.expect("publish");
        envs.push(env);
    }
    let q = qs(&["high", "low"]);
    for _ in 0..envs.len() {
        let d = b.take(&q, SOON).await.expect("take").expect("taken");
        b.dead(&d, &dead_of(&d, "boom")).await.expect("dead");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b.take(&q, F::NOTHING).await.expect("take").is_none());

    let all = b.dead_list(&DeadFilter::default()).await.expect("list");
    assert_eq!(all.len(), 4);
    let ids: Vec<_> = all.iter().map(|d| d.id.clone()).collect();
    let want: Vec<_> = envs.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, want, "oldest first");
    assert_eq!(all[0].reason, "boom");
    assert_eq!(all[0].attempts, 3);
    assert_eq!(all[0].errors.len(), 1);
    assert_eq!(all[0].name.as_deref(), Some("a"));
    // Listing leaves them in place.
    assert_eq!(
        b.dead_list(&DeadFilter::default())
            .await
            .expect("list")
            .len(),
        4
    );

    let high = DeadFilter {
        queue: Some("high".into()),
        ..Default::default()
    };
    assert_eq!(b.dead_list(&high).await.expect("list").len(), 2);
    let named_a = DeadFilter {
        event: Some("a".into()),
        ..Default::default()
    };
    assert_eq!(b.dead_list(&named_a).await.expect("list").len(), 2);
    let before_third = DeadFilter {
        died_before_ms: Some(all[2].died_at_ms),
        ..Default::default()
    };
    assert_eq!(b.dead_list(&before_third).await.expect("list").len(), 2);

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
    let err = b
        .dead_purge(Some("nope"), &DeadFilter::default())
        .await
        .expect_err("unknown id");
    assert!(err.to_string().contains("nope"), "{err}");

    // Retry one by id: a fresh first attempt, same id and params.
    assert_eq!(
        b.dead_retry(Some(&ids[0]), &DeadFilter::default())
            .await
            .expect("retry"),
        1
    );
    let d = b.take(&q, SOON).await.expect("take").expect("retried");
    let fresh = env_of(&d);
    assert_eq!(fresh.id, envs[0].id);
    assert_eq!(fresh.params, envs[0].params);
    assert_eq!(fresh.attempt, 1);
    assert!(fresh.errors.is_empty());
    assert!(!d.redelivered);
    b.ack(&d).await.expect("ack");
    assert_eq!(
        b.dead_list(&DeadFilter::default())
            .await
            .expect("list")
            .len(),
        3
    );

    // Retry by filter: the remaining high one.
    assert_eq!(b.dead_retry(None, &high).await.expect("retry"), 1);
    let d = b.take(&q, SOON).await.expect("take").expect("retried");
    assert_eq!(env_of(&d).id, envs[1].id);
    assert_eq!(d.queue, "high");
    b.ack(&d).await.expect("ack");

    // Purge by filter, then by id.
    let c = DeadFilter {
        event: Some("c".into()),
        ..Default::default()
    };
    assert_eq!(b.dead_purge(None, &c).await.expect("purge"), 1);
    assert_eq!(
        b.dead_purge(Some(&ids[2]), &DeadFilter::default())
            .await
            .expect("purge"),
        1
    );
    assert!(
        b.dead_list(&DeadFilter::default())
            .await
            .expect("list")
            .is_empty()
    );

    // Purge by time (died before now) on a fresh dead event.
    b.publish(&Envelope::new("a", "low", json!({ "n": 9 })))
        .await
        .expect("publish");
    let d = b.take(&q, SOON).await.expect("take").expect("event");
    b.dead(&d, &dead_of(&d, "again")).await.expect("dead");
    let n = b
        .dead_purge(
            None,
            &DeadFilter {
                died_before_ms: Some(now_ms() + 1),
                ..Default::default()
            },
        )
        .await
        .expect("purge");
    assert_eq!(n, 1);
    assert!(
        b.dead_list(&DeadFilter::default())
            .await
            .expect("list")
            .is_empty()
    );
    f.clean(&b).await;
}

/// A dead event whose body is not an envelope is listed but not retried;
/// the valid ones are.
async fn dead_retry_skips_a_body_that_is_not_an_envelope<F: Backend>(f: F) {
    let b = f.open().await;
    let q = qs(&["high"]);
    for _ in 0..2 {
        b.publish(&Envelope::new("e", "high", json!({})))
            .await
            .expect("publish");
    }
    let d = b.take(&q, SOON).await.expect("take").expect("taken");
    let mut garbage = dead_of(&d, "unreadable");
    garbage.body = "not json at all".into();
    b.dead(&d, &garbage).await.expect("dead");
    let d = b.take(&q, SOON).await.expect("take").expect("taken");
    b.dead(&d, &dead_of(&d, "boom")).await.expect("dead");

    assert_eq!(
        b.dead_retry(None, &DeadFilter::default())
            .await
            .expect("retry"),
        1
    );
    let left = b.dead_list(&DeadFilter::default()).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body, "not json at all");
    assert_eq!(
        b.dead_retry(Some(&left[0].id), &DeadFilter::default())
            .await
            .expect("retry"),
        0
    );
    let d = b
        .take(&q, SOON)
        .await
        .expect("take")
        .expect("the valid one");
    b.ack(&d).await.expect("ack");
    f.clean(&b).await;
}

/// A broker takes events ahead of `take` (SQLite's batch claim, RabbitMQ's
/// prefetch); when it closes, the ones it did not hand out go back to the
/// others at once, each exactly once.
async fn events_taken_ahead_go_back_when_their_owner_closes<F: Backend>(f: F) {
    let a = f.open().await;
    let envs: Vec<_> = (0..20)
        .map(|n| Envelope::new("test_event", "low", json!({ "n": n })))
        .collect();
    for e in &envs {
        a.publish(e).await.expect("publish");
    }
    let q = qs(&["low"]);
    // `a` takes one; the rest may be taken ahead into its hands.
    let d = a.take(&q, SOON).await.expect("take").expect("event");
    assert_eq!(env_of(&d).id, envs[0].id);
    a.ack(&d).await.expect("ack");
    F::close(a).await;
    let b = f.open().await;
    let started = Instant::now();
    let mut got = Vec::new();
    while let Some(d) = b.take(&q, F::NOTHING).await.expect("take") {
        got.push(env_of(&d).id);
        b.ack(&d).await.expect("ack");
    }
    let want: Vec<_> = envs[1..].iter().map(|e| e.id).collect();
    assert_eq!(got, want, "the 19 others, in order, once each");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "given back at once, not after a lease: {:?}",
        started.elapsed()
    );
    f.clean(&b).await;
}

/// The poller holding an event is lost (its broker dropped without a
/// settle): the event comes back to another, marked redelivered.
async fn an_event_in_hand_comes_back_when_its_owner_is_lost<F: Backend>(f: F) {
    let a = f.open_mortal().await;
    let sent = Envelope::new("test_event", "drop", json!({ "n": 1 }));
    a.publish(&sent).await.expect("publish");
    let q = qs(&["drop"]);
    let d = a.take(&q, SOON).await.expect("take").expect("event");
    drop(d);
    drop(a);
    let b = f.open().await;
    let again = b
        .take(&q, Duration::from_secs(10))
        .await
        .expect("take")
        .expect("returned");
    assert_eq!(env_of(&again).id, sent.id);
    assert!(again.redelivered);
    b.ack(&again).await.expect("ack");
    assert!(b.take(&q, F::NOTHING).await.expect("take").is_none());
    f.clean(&b).await;
}

/// `depth` counts the waiting events of one queue, not those of others nor
/// one in hand; a queue nobody used has none.
async fn depth_counts_waiting_events<F: Backend>(f: F) {
    let b = f.open().await;
    for _ in 0..3 {
        b.publish(&Envelope::new("e", "low", json!({})))
            .await
            .expect("publish");
    }
    b.publish(&Envelope::new("e", "high", json!({})))
        .await
        .expect("publish");
    assert_eq!(b.depth("low").await.expect("depth").waiting, 3);
    assert_eq!(b.depth("high").await.expect("depth").waiting, 1);
    let held = b
        .take(&qs(&["high"]), SOON)
        .await
        .expect("take")
        .expect("taken");
    assert_eq!(b.depth("high").await.expect("depth").waiting, 0);
    assert_eq!(b.depth("low").await.expect("depth").waiting, 3);
    assert_eq!(b.depth("nope").await.expect("depth").waiting, 0);
    b.ack(&held).await.expect("ack");
    f.clean(&b).await;
}

/// A paused queue gives nothing to `take` while the others still go in
/// strict priority; the pause is durable and shared (a new handle sees it);
/// events queued while paused wait; resume brings them all, once each.
async fn pause_and_resume_a_queue<F: Backend>(f: F) {
    let a = f.open().await;
    let all = qs(&["high", "medium", "low"]);
    for i in 0..4 {
        for q in ["low", "medium", "high"] {
            a.publish(&Envelope::new("e", q, json!({ "i": i })))
                .await
                .expect("publish");
        }
    }
    assert!(a.pause_queue("").await.is_err(), "an empty name is refused");
    a.pause_queue("medium").await.expect("pause");
    a.pause_queue("medium")
        .await
        .expect("pausing twice is fine");
    assert_eq!(a.paused_among(&all).await.expect("among"), qs(&["medium"]));
    assert!(
        a.paused_queues()
            .await
            .expect("list")
            .contains(&"medium".into())
    );

    // Strict priority among the others, nothing from `medium`.
    let mut order = Vec::new();
    while let Some(d) = a.take(&all, F::NOTHING).await.expect("take") {
        order.push(d.queue.clone());
        a.ack(&d).await.expect("ack");
    }
    assert_eq!(
        order,
        qs(&["high", "high", "high", "high", "low", "low", "low", "low"])
    );
    assert_eq!(a.depth("medium").await.expect("depth").waiting, 4);
    // (Closed: RabbitMQ would push the next `low` event to its consumer.)
    F::close(a).await;

    // A new handle (a poller started after the pause) sees it at once.
    let b = f.open().await;
    assert_eq!(b.paused_among(&all).await.expect("among"), qs(&["medium"]));
    for i in 4..6 {
        b.publish(&Envelope::new("e", "medium", json!({ "i": i })))
            .await
            .expect("publish");
    }
    b.publish(&Envelope::new("e", "low", json!({ "i": 9 })))
        .await
        .expect("publish");
    let d = b
        .take(&all, SOON)
        .await
        .expect("take")
        .expect("the low one");
    assert_eq!(d.queue, "low");
    b.ack(&d).await.expect("ack");
    assert!(b.take(&all, F::NOTHING).await.expect("take").is_none());
    assert!(
        b.take(&qs(&["medium"]), F::NOTHING)
            .await
            .expect("take")
            .is_none()
    );
    assert_eq!(b.depth("medium").await.expect("depth").waiting, 6);

    // Resumed through another handle: `b`, which saw it paused, sees the
    // resume within 250 ms.
    let c = f.open().await;
    c.resume_queue("medium").await.expect("resume");
    c.resume_queue("medium")
        .await
        .expect("resuming twice is fine");
    assert!(c.paused_among(&all).await.expect("among").is_empty());
    let mut got = Vec::new();
    let deadline = Instant::now() + SOON;
    while got.len() < 6 && Instant::now() < deadline {
        if let Some(d) = b
            .take(&all, Duration::from_millis(200))
            .await
            .expect("take")
        {
            assert_eq!(d.queue, "medium");
            got.push(env_of(&d).params["i"].as_u64().expect("i"));
            b.ack(&d).await.expect("ack");
        }
    }
    assert_eq!(
        got,
        vec![0, 1, 2, 3, 4, 5],
        "every medium event, in order, once each"
    );
    assert!(b.take(&all, F::NOTHING).await.expect("take").is_none());
    f.clean(&b).await;
}

/// A taker that already holds events of a queue ahead of `take` (batch
/// claim, prefetch) sees the pause another handle makes within a second:
/// it starts none of them after that, and gives them back to the queue,
/// where they count as waiting; resume hands them all out.
async fn a_pause_reaches_a_taker_that_holds_events_ahead<F: Backend>(f: F) {
    let admin = f.open().await;
    let low = qs(&["low"]);
    for n in 0..20 {
        admin
            .publish(&Envelope::new("e", "low", json!({ "n": n })))
            .await
            .expect("publish");
    }
    let taker = f.open().await;
    let first = taker.take(&low, SOON).await.expect("take").expect("event");
    taker.ack(&first).await.expect("ack");
    admin.pause_queue("low").await.expect("pause");
    let paused_at = Instant::now();
    // The taker looks at the pause state at most every 250 ms; once it
    // has looked (its first `take` 250 ms after the pause), it hands out
    // nothing of `low`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        taker
            .take(&low, Duration::from_millis(100))
            .await
            .expect("take")
            .is_none(),
        "an event of a paused queue was handed out after the pause was seen"
    );
    let left = 19;
    // What the taker held ahead goes back to the queue: all of it waits.
    let deadline = paused_at + Duration::from_secs(1);
    loop {
        let waiting = admin.depth("low").await.expect("depth").waiting;
        if waiting == left {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} of {left} events wait in the paused queue 1 s after the pause"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        taker
            .take(&low, Duration::from_millis(300))
            .await
            .expect("take")
            .is_none()
    );
    admin.resume_queue("low").await.expect("resume");
    let mut got = 0;
    let deadline = Instant::now() + SOON;
    while got < left && Instant::now() < deadline {
        if let Some(d) = taker
            .take(&low, Duration::from_millis(200))
            .await
            .expect("take")
        {
            got += 1;
            taker.ack(&d).await.expect("ack");
        }
    }
    assert_eq!(
        got, left,
        "every event held back by the pause runs after resume"
    );
    assert!(taker.take(&low, F::NOTHING).await.expect("take").is_none());
    f.clean(&taker).await;
    f.clean(&admin).await;
}

/// `publish_many`: every event of the batch is stored when it returns
/// (counted before any take), each queue keeps the batch's order, a
/// delayed one waits for its time, and an empty batch stores nothing.
async fn publish_many_stores_the_batch_in_order<F: Backend>(f: F) {
    let b = f.open().await;
    b.publish_many(&[]).await.expect("empty batch");
    assert_eq!(b.depth("low").await.expect("depth").waiting, 0);

    let mut batch: Vec<Envelope> = (0..150)
        .map(|i| Envelope::new("e", ["low", "high", "low"][i % 3], json!({ "i": i })))
        .collect();
    let mut later = Envelope::new("e", "high", json!({ "later": true }));
    later.run_at_ms = Some(now_ms() + 1_500);
    batch.push(later.clone());
    b.publish_many(&batch).await.expect("publish_many");
    assert_eq!(b.depth("low").await.expect("depth").waiting, 100);
    assert_eq!(b.depth("high").await.expect("depth").waiting, 50);

    for q in ["high", "low"] {
        let want: Vec<&Envelope> = batch
            .iter()
            .filter(|e| e.queue == q && e.run_at_ms.is_none())
            .collect();
        let mut got = Vec::new();
        while got.len() < want.len() {
            let d = b
                .take(&qs(&[q]), SOON)
                .await
                .expect("take")
                .expect("every event of the batch");
            got.push(env_of(&d));
            b.ack(&d).await.expect("ack");
        }
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "order of `{q}`");
    }
    // Only the delayed one is left, and not before its time.
    let d = b
        .take(&qs(&["high", "low"]), SOON)
        .await
        .expect("take")
        .expect("the delayed event");
    assert_eq!(env_of(&d).id, later.id);
    assert!(now_ms() + 50 >= later.run_at_ms.unwrap_or(0), "taken early");
    b.ack(&d).await.expect("ack");
    assert!(
        b.take(&qs(&["high", "low"]), F::NOTHING)
            .await
            .expect("take")
            .is_none()
    );
    f.clean(&b).await;
}

/// Batches and single publishes from many tasks at once (SQLite commits
/// them together): each event arrives exactly once.
async fn concurrent_batches_and_single_publishes_all_arrive_once<F: Backend>(f: F) {
    let b = Arc::new(f.open().await);
    let mut tasks = Vec::new();
    let mut sent = HashSet::new();
    for t in 0..8 {
        let batch: Vec<Envelope> = (0..40)
            .map(|i| Envelope::new("e", "medium", json!({ "t": t, "i": i })))
            .collect();
        let single = Envelope::new("e", "medium", json!({ "t": t, "single": true }));
        sent.extend(batch.iter().map(|e| e.id));
        sent.insert(single.id);
        let b = Arc::clone(&b);
        tasks.push(tokio::spawn(async move {
            b.publish_many(&batch).await.expect("publish_many");
            b.publish(&single).await.expect("publish");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        b.depth("medium").await.expect("depth").waiting,
        sent.len() as u64
    );
    let mut got = HashSet::new();
    while got.len() < sent.len() {
        let d = b
            .take(&qs(&["medium"]), SOON)
            .await
            .expect("take")
            .expect("every event");
        assert!(got.insert(env_of(&d).id), "an event came twice");
        b.ack(&d).await.expect("ack");
    }
    assert_eq!(got, sent);
    assert!(
        b.take(&qs(&["medium"]), F::NOTHING)
            .await
            .expect("take")
            .is_none()
    );
    f.clean(&b).await;
}
