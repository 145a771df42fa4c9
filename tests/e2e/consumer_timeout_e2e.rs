//! End to end on RabbitMQ's `consumer_timeout`: real poller processes
//! (tests/support/e2e_poller.rs) on a private RabbitMQ node whose
//! `consumer_timeout` is 3 s (checked every 500 ms instead of every 60 s),
//! with the URL's `consumer_timeout=3s` to match.
//!
//! Without `rabbitmq-server` installed each test prints `SKIPPED: ...` and
//! passes, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use action_event_test_support::rabbit_node;

use std::time::{Duration, Instant};

use crate::common::*;
use rabbit_node::RabbitNode;

/// A private node with a 3 s `consumer_timeout` and a world whose pollers
/// use it, or `None` after a loud message.
fn world(prefix: &str) -> Option<(RabbitNode, World)> {
    if !rabbit_node::available_or_skip() {
        return None;
    }
    let node = RabbitNode::start("consumer_timeout = 3000");
    // Checked on each channel's tick: every 500 ms instead of 60 s (not a
    // rabbitmq.conf key; channels opened from now on use it).
    node.ctl_ok(&[
        "eval",
        "application:set_env(rabbit, channel_tick_interval, 500).",
    ]);
    let mut w = World::new(&Backend::Amqp);
    w.url = format!("{}?prefix={prefix}.&consumer_timeout=3s", node.url());
    Some((node, w))
}

/// Every queue of the node with its unacked messages.
fn unacked_by_queue(node: &RabbitNode) -> Vec<(String, String)> {
    node.ctl_ok(&[
        "list_queues",
        "name",
        "messages_unacknowledged",
        "--no-table-headers",
    ])
    .lines()
    .filter_map(|l| {
        let mut it = l.split_whitespace();
        Some((it.next()?.to_string(), it.next()?.to_string()))
    })
    .collect()
}

/// Hold queues (name, unacked messages).
fn holds(node: &RabbitNode, prefix: &str) -> Vec<(String, String)> {
    unacked_by_queue(node)
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("{prefix}.hold.")))
        .collect()
}

/// The unacked messages of `queue`, when it exists.
fn unacked(node: &RabbitNode, queue: &str) -> Option<u64> {
    unacked_by_queue(node)
        .into_iter()
        .find(|(name, _)| name == queue)
        .and_then(|(_, n)| n.parse().ok())
}

/// Hold queues with one unacked message, by name.
fn held(node: &RabbitNode, prefix: &str) -> Vec<String> {
    holds(node, prefix)
        .into_iter()
        .filter(|(_, unacked)| unacked == "1")
        .map(|(name, _)| name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_event_runs_once_past_consumer_timeout_among_short_ones() {
    let Some((node, w)) = world("ctl") else {
        return;
    };
    w.queue_records(1, "medium", "long", 15_000).await;
    w.queue_records(200, "medium", "short", 20).await;
    let mut p = w.spawn("p.log", &["--queues", "medium", "--concurrency", "4"]);
    w.wait_records(Duration::from_secs(30), "the long event to start", |r| {
        r.iter().any(|r| r.tag == "long-0")
    });
    // It moves to a hold queue while it runs (rabbitmqctl can take seconds
    // on a busy machine: look until the long event ends).
    let mut seen = Vec::new();
    while seen.is_empty() && !ends_by_tag(&w.records()).contains_key("long-0") {
        seen = holds(&node, "ctl");
    }
    // More short events while the long one runs past the timeout.
    w.queue_records(200, "medium", "late", 20).await;
    let records = w.wait_records(Duration::from_secs(60), "every event to end", |r| {
        let ends = ends_by_tag(r);
        ends.contains_key("long-0")
            && (0..200).all(|i| {
                ends.contains_key(&format!("short-{i}")) && ends.contains_key(&format!("late-{i}"))
            })
    });
    // Anything run twice would show up within a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive(&mut p), "the poller stayed up:\n{}", w.log("p.log"));
    stop(&mut p, "poller");
    let records = {
        let mut all = w.records();
        all.retain(|r| r.what == "start");
        assert!(all.len() >= records.iter().filter(|r| r.what == "start").count());
        all
    };
    let mut starts = std::collections::HashMap::new();
    for r in &records {
        *starts.entry(r.tag.clone()).or_insert(0) += 1;
    }
    assert_eq!(starts.len(), 401, "every event started");
    let twice: Vec<_> = starts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    let ends = ends_by_tag(&w.records());
    assert!(ends.values().all(|n| *n == 1), "ended exactly once");
    let log = w.log("p.log");
    for bad in [
        "Channel closed",
        "PRECONDITION_FAILED",
        "lost its RabbitMQ delivery",
        "ack failed",
        "cannot renew",
    ] {
        assert!(!log.contains(bad), "`{bad}` in the poller log:\n{log}");
    }
    assert!(
        !seen.is_empty(),
        "the long event moved to a hold queue while it ran"
    );
    assert!(
        holds(&node, "ctl").is_empty(),
        "its hold queue is gone once it ended"
    );
    let broker_log = node.log();
    assert!(
        !broker_log.contains("timed out"),
        "the broker closed no channel:\n{broker_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_an_event_is_held_runs_it_again_elsewhere() {
    let Some((node, w)) = world("ctk") else {
        return;
    };
    w.queue_records(1, "medium", "long", 30_000).await;
    let mut p = w.spawn("p.log", &["--queues", "medium"]);
    w.wait_records(Duration::from_secs(30), "the long event to start", |r| {
        r.iter().any(|r| r.tag == "long-0")
    });
    // Held: its copy in a hold queue is the poller's, and the original
    // delivery is acked (a kill between the two would bring both back: two
    // more runs, which at-least-once allows but this test does not count).
    let until = Instant::now() + Duration::from_secs(20);
    while held(&node, "ctk").is_empty() || unacked(&node, "ctk.medium") != Some(0) {
        assert!(
            Instant::now() < until,
            "never held in a hold queue:\n{}",
            w.log("p.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    send_signal(&p, SIGKILL);
    let _ = p.wait();
    let killed = Instant::now();
    assert_eq!(ends_by_tag(&w.records()).get("long-0"), None);

    let mut q = w.spawn("q.log", &["--queues", "medium"]);
    let records = w.wait_records(Duration::from_secs(60), "the event to run again", |r| {
        r.iter().any(|r| r.what == "end" && r.tag == "long-0")
    });
    let back = killed.elapsed();
    stop(&mut q, "second poller");
    let starts: Vec<_> = records.iter().filter(|r| r.what == "start").collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert_eq!(
        starts[1].pid,
        q.id(),
        "the second run is the other poller's"
    );
    assert_eq!(ends_by_tag(&w.records()).get("long-0"), Some(&1));
    eprintln!("the held event ended on the second poller {back:?} after the kill (30 s handler)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_survives_a_channel_the_broker_closes_anyway() {
    let Some((node, mut w)) = world("ctm") else {
        return;
    };
    // Misconfigured: the URL says 1 h, the broker enforces 3 s, so nothing
    // is renewed and the broker closes the channel under the long event
    // (again and again: each run is cut off after ~3 s and runs again).
    w.url = w.url.replace("consumer_timeout=3s", "consumer_timeout=1h");
    w.queue_records(1, "medium", "long", 8_000).await;
    let mut p = w.spawn("p.log", &["--queues", "medium", "--concurrency", "4"]);
    w.wait_records(Duration::from_secs(30), "the long event to start", |r| {
        r.iter().any(|r| r.tag == "long-0")
    });
    w.queue_records(100, "medium", "early", 20).await;
    let until = Instant::now() + Duration::from_secs(30);
    while !node.log().contains("delivery acknowledgement on channel") {
        assert!(
            Instant::now() < until,
            "the broker never closed the channel:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // After the close: the poller goes on with new events.
    w.queue_records(100, "medium", "late", 20).await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ends = ends_by_tag(&w.records());
        if ends.get("long-0").is_some_and(|n| *n >= 2)
            && (0..100).all(|i| {
                ends.contains_key(&format!("early-{i}")) && ends.contains_key(&format!("late-{i}"))
            })
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "not every event ended ({} ends):\n{}",
            ends.len(),
            w.log("p.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(alive(&mut p), "the poller stayed up:\n{}", w.log("p.log"));
    stop(&mut p, "poller");
    let log = w.log("p.log");
    let long_id = w
        .records()
        .into_iter()
        .find(|r| r.tag == "long-0")
        .map(|r| r.id)
        .expect("the long event's id");
    assert!(
        log.lines()
            .any(|l| l.contains("lost its RabbitMQ delivery") && l.contains(&long_id)),
        "the loss is logged, naming the event:\n{log}"
    );
}
