//! The RabbitMQ backend against a real broker (`ACTION_EVENT_AMQP_URL`,
//! default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! Each test uses its own random prefix and deletes its queues at the end.
//! Without a reachable broker every test prints `SKIPPED: ...` and passes,
//! unless `ACTION_EVENT_REQUIRE_AMQP=1`. Tests that cut connections or stop
//! the broker are in `amqp_private_node.rs`, on a broker node of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use action_event::Envelope;
use action_event::broker::amqp::AmqpBroker;
use action_event::broker::{Broker, DeadEvent, DeadFilter, Delivery};
use action_event::envelope::now_ms;

fn base_url() -> String {
    std::env::var("ACTION_EVENT_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

fn new_prefix() -> String {
    format!("test.{}.", uuid::Uuid::now_v7().simple())
}

fn url_with(prefix: &str, extra: &str) -> String {
    let base = base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}prefix={prefix}{extra}")
}

/// Opens a broker, or returns `None` (after a loud message) when there is
/// no RabbitMQ and it is not required.
async fn open(prefix: &str, extra: &str) -> Option<AmqpBroker> {
    match AmqpBroker::open(&url_with(prefix, extra)).await {
        Ok(b) => Some(b),
        Err(e) => {
            let url = action_event::redact_url(&base_url());
            if std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() == Ok("1") {
                panic!("no RabbitMQ at {url} but ACTION_EVENT_REQUIRE_AMQP=1: {e}");
            }
            // Straight to the stderr stream: the test harness captures
            // `eprintln!` of passing tests, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no RabbitMQ at {url}: {e} ***\n"
            );
            None
        }
    }
}

fn env(queue: &str, n: usize) -> Envelope {
    Envelope::new("test_event", queue, serde_json::json!({ "n": n }))
}

fn parse(d: &Delivery) -> Envelope {
    Envelope::from_slice(&d.body).expect("an envelope")
}

async fn publish_all(b: &AmqpBroker, envs: &[Envelope]) {
    let futs = envs.iter().map(|e| b.publish(e));
    for r in futures_util::future::join_all(futs).await {
        r.expect("publish");
    }
}

#[tokio::test]
async fn round_trip_publish_take_ack() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let sent = env("default", 1);
    b.publish(&sent).await.expect("publish");
    assert_eq!(b.depth("default").await.expect("depth").waiting, 1);
    let d = b
        .take(&["default".to_string()], Duration::from_secs(5))
        .await
        .expect("take")
        .expect("an event");
    assert_eq!(d.queue, "default");
    assert!(!d.redelivered);
    assert_eq!(parse(&d), sent);
    b.ack(&d).await.expect("ack");
    let none = b
        .take(&["default".to_string()], Duration::from_millis(300))
        .await
        .expect("take");
    assert!(none.is_none());
    assert_eq!(b.depth("default").await.expect("depth").waiting, 0);
    assert!(
        !b.url().contains("guest:guest"),
        "password redacted: {}",
        b.url()
    );
    b.delete_topology().await.expect("cleanup");
}

/// Takes `total` events from `queues` with `slots` concurrent tasks per
/// broker; returns the queue of each event in hand-out order.
async fn drain_in_order(
    brokers: Vec<Arc<AmqpBroker>>,
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

fn assert_strict(order: &[String], levels: &[&str]) {
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

#[tokio::test]
async fn strict_priority_with_backlog() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let mut envs = Vec::new();
    for q in ["low", "medium", "high"] {
        for n in 0..300 {
            envs.push(env(q, n));
        }
    }
    publish_all(&b, &envs).await;
    let b = Arc::new(b);
    let order = drain_in_order(vec![b.clone()], &["high", "medium", "low"], 24, 900).await;
    assert_eq!(order.len(), 900);
    assert_strict(&order, &["high", "medium", "low"]);
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test]
async fn strict_priority_two_brokers() {
    let prefix = new_prefix();
    // prefetch at or below the slots per poller: see the module docs.
    let Some(a) = open(&prefix, "&prefetch=8").await else {
        return;
    };
    let Some(b) = open(&prefix, "&prefetch=8").await else {
        return;
    };
    let mut envs = Vec::new();
    for q in ["low", "medium", "high"] {
        for n in 0..300 {
            envs.push(env(q, n));
        }
    }
    publish_all(&a, &envs).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let order = drain_in_order(
        vec![a.clone(), b.clone()],
        &["high", "medium", "low"],
        12,
        900,
    )
    .await;
    assert_eq!(order.len(), 900);
    assert_strict(&order, &["high", "medium", "low"]);
    a.delete_topology().await.expect("cleanup");
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_do_not_block_each_other() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let mut long = env("sched", 3);
    long.run_at_ms = Some(now_ms() + 3_000);
    b.publish(&long).await.expect("publish +3s");
    let mut short = env("sched", 1);
    short.run_at_ms = Some(now_ms() + 1_000);
    b.publish(&short).await.expect("publish +1s");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < deadline {
        if let Some(d) = b
            .take(&["sched".to_string()], Duration::from_millis(500))
            .await
            .expect("take")
        {
            let at = now_ms();
            let e = parse(&d);
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
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_goes_through_the_same_delay_twice() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let q = vec!["work".to_string()];
    let first = env("work", 7);
    b.publish(&first).await.expect("publish");
    let mut d = b
        .take(&q, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");
    for attempt in 2..=3u32 {
        let mut next = parse(&d);
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
        let e = parse(&d);
        assert_eq!(e.id, first.id);
        assert_eq!(e.attempt, attempt);
        assert!(waited >= 1_000, "attempt {attempt} only waited {waited} ms");
        assert!(waited < 3_000, "attempt {attempt} waited {waited} ms");
    }
    b.ack(&d).await.expect("ack");
    assert!(
        b.take(&q, Duration::from_millis(300))
            .await
            .expect("take")
            .is_none()
    );
    b.delete_topology().await.expect("cleanup");
}

fn dead_of(d: &Delivery, reason: &str) -> DeadEvent {
    let e = parse(d);
    DeadEvent {
        id: e.id.to_string(),
        name: Some(e.name.clone()),
        queue: d.queue.clone(),
        body: String::from_utf8_lossy(&d.body).into_owned(),
        attempts: e.attempt,
        errors: e.errors.clone(),
        reason: reason.to_string(),
        died_at_ms: now_ms(),
    }
}

#[tokio::test]
async fn dead_letters_list_retry_purge() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let envs = vec![env("a", 0), env("a", 1), env("b", 2)];
    publish_all(&b, &envs).await;
    let qs = vec!["a".to_string(), "b".to_string()];
    for _ in 0..3 {
        let d = b
            .take(&qs, Duration::from_secs(5))
            .await
            .expect("take")
            .expect("event");
        let dead = dead_of(&d, "boom");
        b.dead(&d, &dead).await.expect("dead");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        b.take(&qs, Duration::from_millis(200))
            .await
            .expect("take")
            .is_none()
    );

    let all = b.dead_list(&DeadFilter::default()).await.expect("list");
    assert_eq!(all.len(), 3);
    assert!(
        all.windows(2).all(|w| w[0].died_at_ms <= w[1].died_at_ms),
        "oldest first"
    );
    let in_a = b
        .dead_list(&DeadFilter {
            queue: Some("a".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(in_a.len(), 2);
    // Listing leaves them in place.
    assert_eq!(
        b.dead_list(&DeadFilter::default())
            .await
            .expect("list")
            .len(),
        3
    );

    // Retry one by id: back on its queue as a fresh first attempt.
    let one = &in_a[0];
    assert_eq!(
        b.dead_retry(Some(&one.id), &DeadFilter::default())
            .await
            .expect("retry"),
        1
    );
    let d = b
        .take(&qs, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("revived");
    let e = parse(&d);
    assert_eq!(e.id.to_string(), one.id);
    assert_eq!(e.attempt, 1);
    b.ack(&d).await.expect("ack");
    assert_eq!(
        b.dead_list(&DeadFilter::default())
            .await
            .expect("list")
            .len(),
        2
    );

    // Retry by filter.
    let n = b
        .dead_retry(
            None,
            &DeadFilter {
                queue: Some("b".into()),
                ..Default::default()
            },
        )
        .await
        .expect("retry");
    assert_eq!(n, 1);
    let d = b
        .take(&qs, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("revived");
    assert_eq!(d.queue, "b");
    b.ack(&d).await.expect("ack");

    // Purge: unknown id, then by id.
    let left = b.dead_list(&DeadFilter::default()).await.expect("list");
    assert_eq!(left.len(), 1);
    let err = b
        .dead_purge(Some("nope"), &DeadFilter::default())
        .await
        .expect_err("unknown id");
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(
        b.dead_purge(Some(&left[0].id), &DeadFilter::default())
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
    // Purge by filter (died before now) on a fresh dead event.
    b.publish(&env("a", 9)).await.expect("publish");
    let d = b
        .take(&qs, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");
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
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test]
async fn release_requeues_redelivered() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let sent = env("rel", 1);
    b.publish(&sent).await.expect("publish");
    let q = vec!["rel".to_string()];
    let d = b
        .take(&q, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");
    b.release(&d).await.expect("release");
    let again = b
        .take(&q, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("again");
    assert_eq!(parse(&again).id, sent.id);
    assert!(again.redelivered);
    b.ack(&again).await.expect("ack");
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test]
async fn unacked_delivery_returns_when_broker_dropped() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let sent = env("drop", 1);
    b.publish(&sent).await.expect("publish");
    let q = vec!["drop".to_string()];
    let d = b
        .take(&q, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");
    drop(d);
    drop(b);
    let Some(b2) = open(&prefix, "").await else {
        return;
    };
    let again = b2
        .take(&q, Duration::from_secs(10))
        .await
        .expect("take")
        .expect("returned");
    assert_eq!(parse(&again).id, sent.id);
    assert!(again.redelivered);
    b2.ack(&again).await.expect("ack");
    b2.delete_topology().await.expect("cleanup");
}

#[tokio::test]
async fn buffered_lower_events_are_returned_on_close() {
    let prefix = new_prefix();
    let Some(a) = open(&prefix, "").await else {
        return;
    };
    publish_all(&a, &(0..20).map(|n| env("low", n)).collect::<Vec<_>>()).await;
    let q = vec!["low".to_string()];
    // `a` takes one; the rest are prefetched into its buffer.
    let d = a
        .take(&q, Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");
    a.ack(&d).await.expect("ack");
    a.close().await;
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let mut n = 0;
    while let Some(d) = b.take(&q, Duration::from_millis(500)).await.expect("take") {
        b.ack(&d).await.expect("ack");
        n += 1;
    }
    assert_eq!(n, 19);
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test]
async fn queue_with_other_arguments_is_a_clear_error() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let conn = lapin::Connection::connect(&base_url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-max-priority".into(),
        lapin::types::AMQPValue::ShortShortUInt(5),
    );
    let name = format!("{prefix}jobs");
    ch.queue_declare(
        name.as_str().into(),
        lapin::options::QueueDeclareOptions::durable(),
        args,
    )
    .await
    .expect("declare foreign queue");
    let err = b.publish(&env("jobs", 1)).await.expect_err("mismatch");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains(&name), "names the queue: {text}");
    assert!(
        text.contains("x-max-priority"),
        "names the argument: {text}"
    );
    assert!(!text.contains("guest:guest"), "redacted: {text}");
    let err = b
        .take(&["jobs".to_string()], Duration::from_secs(1))
        .await
        .expect_err("mismatch");
    assert!(err.to_string().contains("x-max-priority"), "{err}");
    ch.queue_delete(
        name.as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .expect("delete");
    let _ = conn.close(200, "OK".into()).await;
    b.delete_topology().await.expect("cleanup");
}

/// A poller whose slots are all busy with long events takes nothing for a
/// while: the events it buffered go back to the broker after 5 s, but the
/// ones it is running stay its own (their channel stays open), so none of
/// them is delivered again.
#[tokio::test]
async fn events_in_hand_stay_when_buffered_ones_go_back() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "&prefetch=8").await else {
        return;
    };
    let envs: Vec<Envelope> = (0..10).map(|n| env("busy", n)).collect();
    publish_all(&b, &envs).await;
    let q = vec!["busy".to_string()];
    let mut in_hand = Vec::new();
    for _ in 0..2 {
        in_hand.push(
            b.take(&q, Duration::from_secs(5))
                .await
                .expect("take")
                .expect("event"),
        );
    }
    // No take for 8 s: longer than the 5 s after which buffered events go back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut seen: HashMap<String, (usize, bool)> = HashMap::new();
    for d in &in_hand {
        seen.insert(parse(d).id.to_string(), (1, d.redelivered));
        b.ack(d).await.expect("ack");
    }
    while let Some(d) = b.take(&q, Duration::from_secs(3)).await.expect("take") {
        let e = seen.entry(parse(&d).id.to_string()).or_insert((0, false));
        e.0 += 1;
        b.ack(&d).await.expect("ack");
    }
    assert_eq!(seen.len(), 10, "every event came: {seen:?}");
    assert!(
        seen.values().all(|(n, _)| *n == 1),
        "each exactly once (the two in hand not again): {seen:?}"
    );
    b.delete_topology().await.expect("cleanup");
}
