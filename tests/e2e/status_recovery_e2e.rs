//! `poller status` across machines after the broker drops the pollers'
//! connections: each poller's ping-answering loop rebuilds its connection,
//! queue and consumer (backoff 200 ms doubling to 10 s), so the poller is
//! listed again within a bound. Against a private RabbitMQ node
//! (`RabbitNode`), never the shared broker.
//!
//! Without `rabbitmq-server` installed the test prints `SKIPPED: ...` and
//! passes, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use action_event_test_support::rabbit_node;

use std::time::{Duration, Instant};

use crate::common::*;
use rabbit_node::RabbitNode;

fn private_node() -> Option<RabbitNode> {
    if !rabbit_node::available_or_skip() {
        return None;
    }
    Some(RabbitNode::start(""))
}

/// Whether `poller status` lists the poller with this pid now.
fn listed(w: &World, pid: u32) -> bool {
    let out = w.run(&["status", "--pid-dir", "none"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.split("Pollers on ").nth(1).is_some_and(|t| {
        t.lines()
            .any(|l| l.split_whitespace().nth(2) == Some(&pid.to_string()))
    })
}

/// How long until `poller status` lists the poller; panics after `limit`.
fn until_listed(w: &World, pid: u32, limit: Duration, what: &str, log: &str) -> Duration {
    let started = Instant::now();
    while !listed(w, pid) {
        assert!(
            started.elapsed() < limit,
            "{what}: the poller was not listed again within {limit:?}; its log:\n{}",
            w.log(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_a_poller_again_after_connection_loss_and_broker_restart() {
    let Some(node) = private_node() else { return };
    let w = World::amqp_at(&node.url());
    let mut poller = w.spawn("p.log", &["--id", "p1", "--queues", "medium", "start"]);
    let pid = poller.id();
    let first = until_listed(&w, pid, Duration::from_secs(30), "at start", "p.log");
    eprintln!("listed {first:?} after start");

    // 1. The broker closes every connection (the node stays up).
    node.close_all_connections();
    let cut = Instant::now();
    let again = until_listed(
        &w,
        pid,
        Duration::from_secs(10),
        "after close_all_connections",
        "p.log",
    );
    eprintln!("listed again {again:?} after close_all_connections");
    assert!(alive(&mut poller), "{}", w.log("p.log"));
    let log = w.log("p.log");
    assert!(
        log.contains("status subscription lost") && log.contains("answering status requests again"),
        "the status connection was cut, so the loop must have rebuilt it ({:?} ago):\n{log}",
        cut.elapsed()
    );

    // 2. Its status queue is deleted (the broker cancels the consumer).
    let queues = node.ctl_ok(&["list_queues", "name", "--no-table-headers"]);
    let status_queues: Vec<&str> = queues
        .lines()
        .map(str::trim)
        .filter(|q| q.starts_with("amq.gen-"))
        .collect();
    assert_eq!(status_queues.len(), 1, "{queues}");
    node.ctl_ok(&["delete_queue", status_queues[0]]);
    let again = until_listed(
        &w,
        pid,
        Duration::from_secs(10),
        "after delete_queue",
        "p.log",
    );
    eprintln!("listed again {again:?} after its status queue was deleted");
    assert!(
        w.log("p.log").contains("status subscription ended"),
        "{}",
        w.log("p.log")
    );

    // 3. The broker stops for 2 s and comes back.
    let stopped = tokio::task::spawn_blocking(move || {
        node.stop_app();
        std::thread::sleep(Duration::from_secs(2));
        node.start_app();
        node
    });
    let node = stopped.await.expect("restart");
    // The loop's backoff is at most 10 s; allow it once, plus a reconnect.
    let again = until_listed(
        &w,
        pid,
        Duration::from_secs(20),
        "after stop_app/start_app",
        "p.log",
    );
    eprintln!("listed again {again:?} after start_app");
    assert!(alive(&mut poller), "{}", w.log("p.log"));
    let rebuilt = w
        .log("p.log")
        .matches("answering status requests again")
        .count();
    assert!(
        rebuilt >= 3,
        "a rebuild per loss, got {rebuilt}:\n{}",
        w.log("p.log")
    );

    stop(&mut poller, "the poller");
    drop(node);
}
