//! A phase of `cluster_e2e`: renewals for RabbitMQ's `consumer_timeout`
//! (see `action_event/src/broker/amqp/hold.rs`) across a node's death, on
//! quorum queues. Every node gets `consumer_timeout = 4000` and
//! `channel_tick_interval = 500` (checked every 500 ms, not every 60 s),
//! the URL says `consumer_timeout=4s`, and a 10 s event runs while
//!
//! 1. the node leading its work queue is killed (`kill -9`) before its first
//!    renewal, the poller being on another node: the renewal acks the first
//!    delivery through the queue's new leader and the renewals go on; the
//!    event runs once;
//! 2. the poller's own node is killed, which leads the event's hold queue:
//!    the poller moves to another node, its delivery is lost and the event
//!    runs again there (counted), renewed on the surviving nodes.
//!
//! No node closes a channel for an unacked delivery, and nothing is lost.
//! The node settings stay for later phases (this one runs last).

use std::time::{Duration, Instant};

use crate::cluster_dlx_e2e::tail;
use crate::cluster_e2e::{Pollers, on_node, prefix_of, wait_leader, world};
use crate::common::*;
use action_event::QueueRequest;
use action_event_test_support::rabbit_cluster::RabbitCluster;

/// How long the event runs, in ms (past 2 x consumer_timeout).
const LONG_MS: u64 = 10_000;
/// What the poller logs at each renewal (debug level).
const RENEWED: &str = "renewed a long event's delivery";
/// The renewer's debug lines on, the rest at info.
const LOG: &str = "info,action_event::broker::amqp::hold=debug";

/// See the module docs.
pub(crate) fn renewals_through_a_failover(cluster: &mut RabbitCluster) {
    cluster.set_rabbit_env(&[
        ("consumer_timeout", "4000"),
        ("channel_tick_interval", "500"),
    ]);
    for i in 0..cluster.len() {
        assert_eq!(cluster.node(i).rabbit_env("consumer_timeout"), "{ok,4000}");
    }
    let t = Instant::now();
    leader_dies(cluster);
    eprintln!("consumer_timeout case 1 (leader dies) {:?}", t.elapsed());
    let t = Instant::now();
    own_node_dies(cluster);
    eprintln!(
        "consumer_timeout case 2 (poller's node dies) {:?}",
        t.elapsed()
    );
    for i in 0..cluster.len() {
        let log = cluster.node(i).log();
        assert!(
            !log.contains("delivery acknowledgement on channel"),
            "node {i} closed a channel for an unacked delivery:\n{}",
            tail(&log)
        );
    }
}

/// Queues the long event through node `first` (which then leads the work
/// queue) and starts a poller on node `poller_on`, debug-logging renewals.
fn long_event(
    cluster: &RabbitCluster,
    first: usize,
    poller_on: usize,
    tag: &str,
) -> (World, Pollers) {
    let w = world(cluster, first, "&consumer_timeout=4s");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        w.client()
            .await
            .send(
                QueueRequest::foreign("record")
                    .param("tag", tag)
                    .param("sleep_ms", LONG_MS)
                    .queue("medium"),
            )
            .await
            .expect("queue the long event")
    });
    let log = std::fs::File::create(w.path().join("p.log")).expect("log");
    let out = log.try_clone().expect("log");
    let child = w
        .poller(&["--queues", "medium"])
        .env("ACTION_EVENT_URL", on_node(cluster, &w, poller_on))
        .env("RUST_LOG", LOG)
        .stdout(out)
        .stderr(log)
        .spawn()
        .expect("spawn poller");
    w.wait_records(Duration::from_secs(30), "the long event to start", |r| {
        r.iter().any(|r| r.tag == tag && r.what == "start")
    });
    (w, Pollers(vec![child]))
}

/// (starts, ends) of `tag`.
fn runs(w: &World, tag: &str) -> (usize, usize) {
    let r = w.records();
    let n = |what: &str| r.iter().filter(|r| r.tag == tag && r.what == what).count();
    (n("start"), n("end"))
}

fn leader_dies(cluster: &mut RabbitCluster) {
    let k = 2;
    let p = 0;
    let (w, mut pollers) = long_event(cluster, k, p, "long-a");
    let queue = format!("{}medium", prefix_of(&w));
    let leader = wait_leader(cluster, &queue);
    let since_start = Instant::now();
    cluster.node_mut(leader).kill_vm();
    let before = w.log("p.log").len();
    eprintln!(
        "consumer_timeout: killed node {leader} (leader of {queue}; poller on node {p}) {:?} after \
         the long event started, renewals so far: {}",
        since_start.elapsed(),
        w.log("p.log").matches(RENEWED).count()
    );
    w.wait_records(Duration::from_secs(60), "the long event to end", |r| {
        r.iter().any(|r| r.tag == "long-a" && r.what == "end")
    });
    // A second run would start within the broker's tick of a closed
    // channel, or when a lost delivery comes back: give it that long.
    std::thread::sleep(Duration::from_secs(3));
    let log = w.log("p.log");
    let after = log[before.min(log.len())..].matches(RENEWED).count();
    let (starts, ends) = runs(&w, "long-a");
    eprintln!(
        "consumer_timeout: the {LONG_MS} ms event ran {starts} time(s), ended {ends} time(s); \
         {after} renewal(s) after the kill"
    );
    assert!(
        after >= 2,
        "renewals went on after the leader's death (4 s consumer_timeout, renewed every 1.3 s):\n{}",
        tail(&log)
    );
    assert_eq!(
        (starts, ends),
        (1, 1),
        "the poller's channel survived the leader: one run:\n{}",
        tail(&log)
    );
    assert!(
        alive(&mut pollers.0[0]),
        "the poller exited:\n{}",
        tail(&log)
    );
    stop(&mut pollers.0[0], "poller");
    cluster.node_mut(leader).restart_vm();
    cluster.wait_running(3);
}

fn own_node_dies(cluster: &mut RabbitCluster) {
    let k = 1;
    let (w, mut pollers) = long_event(cluster, k, k, "long-b");
    let prefix = prefix_of(&w);
    // Held: its hold queue exists (declared from the poller's node).
    let until = Instant::now() + Duration::from_secs(20);
    let hold = loop {
        if let Some((name, leader)) = cluster.leaders(&format!("{prefix}hold.")).pop() {
            break (name, leader);
        }
        assert!(
            Instant::now() < until,
            "the long event was never held:\n{}",
            tail(&w.log("p.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    cluster.node_mut(k).kill_vm();
    let killed = action_event::envelope::now_ms();
    eprintln!("consumer_timeout: killed node {k}, the poller's (hold queue {hold:?})");
    // The first run goes on in the poller; the broker hands the event out
    // again once its delivery is known lost.
    w.wait_records(Duration::from_secs(60), "the first run to end", |r| {
        r.iter().any(|r| r.tag == "long-b" && r.what == "end")
    });
    cluster.node_mut(k).restart_vm();
    cluster.wait_running(3);
    let restarted = action_event::envelope::now_ms();
    let records = w.wait_records(Duration::from_secs(90), "a second run to end", |r| {
        r.iter()
            .filter(|r| r.tag == "long-b" && r.what == "end")
            .count()
            >= 2
    });
    std::thread::sleep(Duration::from_secs(3));
    let (starts, ends) = runs(&w, "long-b");
    let second = records
        .iter()
        .filter(|r| r.tag == "long-b" && r.what == "start")
        .nth(1)
        .map(|r| r.ms)
        .expect("a second start");
    let log = w.log("p.log");
    eprintln!(
        "consumer_timeout: the poller's node died; the event ran {starts} time(s), ended {ends} \
         time(s); the second run started {} ms after the kill (the node was back after {} ms), \
         {} renewal(s) in all",
        second as i64 - killed as i64,
        restarted as i64 - killed as i64,
        log.matches(RENEWED).count()
    );
    assert_eq!(starts, ends, "every run ended:\n{}", tail(&log));
    assert!(
        alive(&mut pollers.0[0]),
        "the poller exited:\n{}",
        tail(&log)
    );
    stop(&mut pollers.0[0], "poller");
}
