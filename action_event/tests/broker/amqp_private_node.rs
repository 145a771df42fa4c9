//! The RabbitMQ backend against a private broker node of its own
//! (`action_event_test_support::rabbit_node`): tests that cut connections, restart the
//! broker or change its configuration, without disturbing the shared broker
//! on 5672 (nor each other: one node per test).
//!
//! Without `rabbitmq-server` installed each test prints `SKIPPED: ...` and
//! passes, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use action_event_test_support::rabbit_node;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use action_event::Envelope;
use action_event::broker::Broker;
use action_event::broker::amqp::AmqpBroker;
use rabbit_node::RabbitNode;

/// A private node, or `None` after a loud message when none can be started
/// and `ACTION_EVENT_REQUIRE_AMQP` is not `1`.
fn node(conf: &str) -> Option<RabbitNode> {
    if !rabbit_node::available_or_skip() {
        return None;
    }
    Some(RabbitNode::start(conf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_events_survive_a_broker_restart() {
    let Some(node) = node("") else { return };
    let url = format!("{}?prefix=restart.", node.url());
    let b = AmqpBroker::open(&url).await.expect("open");
    for n in 0..100 {
        b.publish(&Envelope::new("t", "work", serde_json::json!({ "n": n })))
            .await
            .expect("publish");
    }
    b.close().await;
    let stopper = tokio::task::spawn_blocking(move || {
        node.stop_app();
        node.start_app();
        node
    });
    let node = stopper.await.expect("restart");
    assert_eq!(node.ready("restart.work"), Some(100), "{}", node.log());

    let b = AmqpBroker::open(&url).await.expect("open after restart");
    let mut seen = HashSet::new();
    while let Some(d) = b
        .take(&["work".to_string()], Duration::from_secs(3))
        .await
        .expect("take")
    {
        let env = Envelope::from_slice(&d.body).expect("an envelope");
        seen.insert(env.params["n"].as_u64().expect("n"));
        b.ack(&d).await.expect("ack");
        if seen.len() == 100 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        100,
        "every confirmed event is back after the restart"
    );
    b.close().await;
}

fn env(queue: &str, n: usize) -> Envelope {
    Envelope::new("test_event", queue, serde_json::json!({ "n": n }))
}

async fn publish_all(b: &AmqpBroker, envs: &[Envelope]) {
    let futs = envs.iter().map(|e| b.publish(e));
    for r in futures_util::future::join_all(futs).await {
        r.expect("publish");
    }
}

/// 16 tasks take and ack 2,000 events from one broker while `disrupt` runs
/// (on a blocking thread) once per number of events taken in `at`. It must
/// be over before the last event is taken. Every event must
/// be taken at least once within 120 s; duplicates (at-least-once: an event
/// whose ack was lost with its connection) are counted and printed.
async fn take_through(node: RabbitNode, what: &str, at: &[usize], disrupt: fn(&RabbitNode)) {
    let url = format!("{}?prefix=cut.", node.url());
    let b = AmqpBroker::open(&url).await.expect("open");
    let total = 2_000;
    let envs: Vec<Envelope> = (0..total).map(|n| env("bulk", n)).collect();
    let ids: HashSet<String> = envs.iter().map(|e| e.id.to_string()).collect();
    for chunk in envs.chunks(500) {
        publish_all(&b, chunk).await;
    }
    let b = Arc::new(b);
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (b, seen, ids_len) = (b.clone(), seen.clone(), ids.len());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.lock().expect("lock").len() < ids_len && Instant::now() < deadline {
                if let Some(d) = b
                    .take(&["bulk".to_string()], Duration::from_millis(300))
                    .await
                    .expect("take never fails for a connection loss")
                {
                    let id = Envelope::from_slice(&d.body).expect("envelope").id;
                    *seen
                        .lock()
                        .expect("lock")
                        .entry(id.to_string())
                        .or_default() += 1;
                    // Slow enough that the disruptions land while events flow.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    b.ack(&d)
                        .await
                        .expect("ack never fails for a connection loss");
                }
            }
        }));
    }
    let mut node = node;
    for &at in at {
        while seen.lock().expect("lock").len() < at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node = tokio::task::spawn_blocking(move || {
            disrupt(&node);
            node
        })
        .await
        .expect("disrupt");
        let after = seen.lock().expect("lock").len();
        eprintln!("{what} with {after} of {total} taken");
        assert!(
            after < total,
            "the disruption landed after every event was taken: slow the handler down"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Redeliveries of events whose ack was lost may still be queued: take
    // them too (they are duplicates), so the queue ends empty.
    while let Some(d) = b
        .take(&["bulk".to_string()], Duration::from_secs(2))
        .await
        .expect("take")
    {
        let id = Envelope::from_slice(&d.body).expect("envelope").id;
        *seen
            .lock()
            .expect("lock")
            .entry(id.to_string())
            .or_default() += 1;
        b.ack(&d).await.expect("ack");
    }
    let seen = seen.lock().expect("lock").clone();
    let missing = ids.iter().filter(|id| !seen.contains_key(*id)).count();
    let dups: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{what} ({} time(s)) while taking {total}: {missing} missing, duplicates: {dups} ({:?} in all)",
        at.len(),
        started.elapsed()
    );
    assert_eq!(missing, 0, "{what}: no event lost");
    b.close().await;
    // Checked (and the node stopped) off the async threads: both block.
    tokio::task::spawn_blocking(move || {
        assert_eq!(node.ready("cut.bulk"), Some(0), "nothing left in the queue");
    })
    .await
    .expect("nothing left in the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_while_taking_lose_nothing() {
    let Some(node) = node("") else { return };
    take_through(node, "close_all_connections", &[200, 900], |n| {
        n.close_all_connections()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_while_taking_loses_nothing() {
    let Some(node) = node("") else { return };
    // Once: a restart takes several seconds (longer on a busy machine).
    take_through(node, "stop_app, 2 s, start_app", &[200], |n| {
        n.stop_app();
        std::thread::sleep(Duration::from_secs(2));
        n.start_app();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_during_outage_succeeds_after_reconnect() {
    let Some(node) = node("") else { return };
    let url = |extra: &str| format!("{}?prefix=outage.{extra}", node.url());
    let b = AmqpBroker::open(&url("&publish_timeout=60s"))
        .await
        .expect("open");
    let impatient = AmqpBroker::open(&url("&publish_timeout=1s"))
        .await
        .expect("open");
    b.publish(&env("outage", 0)).await.expect("publish before");

    // Connections cut: publishes wait for the reconnect.
    let node = tokio::task::spawn_blocking(move || {
        node.close_all_connections();
        node
    })
    .await
    .expect("cut");
    publish_all(&b, &(1..21).map(|n| env("outage", n)).collect::<Vec<_>>()).await;

    // The broker down for a few seconds.
    let node = tokio::task::spawn_blocking(move || {
        node.stop_app();
        node
    })
    .await
    .expect("stop");
    let err = impatient
        .publish(&env("outage", 99))
        .await
        .expect_err("gives up after 1 s");
    eprintln!("{err}");
    assert!(err.to_string().contains("publish_timeout"), "{err}");
    assert!(!err.to_string().contains("guest:guest"), "{err}");
    let b = Arc::new(b);
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move {
            let envs: Vec<Envelope> = (21..41).map(|n| env("outage", n)).collect();
            publish_all(&b, &envs).await;
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = tokio::task::spawn_blocking(move || {
        node.start_app();
        node
    })
    .await
    .expect("start");
    waiting
        .await
        .expect("publishes made during the outage succeed");

    let mut ids = HashSet::new();
    while let Some(d) = b
        .take(&["outage".to_string()], Duration::from_secs(2))
        .await
        .expect("take")
    {
        let n = Envelope::from_slice(&d.body).expect("envelope").params["n"]
            .as_u64()
            .expect("n");
        ids.insert(n);
        b.ack(&d).await.expect("ack");
        if ids.len() == 41 {
            break;
        }
    }
    assert_eq!(ids.len(), 41, "every confirmed publish is there");
    impatient.close().await;
    b.close().await;
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .expect("stop the node");
}
