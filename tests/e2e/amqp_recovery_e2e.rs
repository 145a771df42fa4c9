//! RabbitMQ recovery, end to end, with real poller processes, each test on a
//! private broker node of its own (`action_event_test_support::rabbit_node`):
//!
//! - a poller stopped (SIGTERM) right after the broker closed its connections
//!   exits within 1 s after its handlers finish: it does not wait on acks to
//!   a connection that is gone (the broker delivers those events again);
//! - pollers take events again within 1 s of `rabbitmqctl start_app` after a
//!   `stop_app` outage long enough for a doubling back-off to reach seconds;
//! - a forced close of every connection logs, at the default log level, no
//!   ERROR line, one WARN line and one INFO line (it is back).
//!
//! Each prints what it measured. Without `rabbitmq-server` installed they
//! print `SKIPPED: ...` and pass, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;
use action_event::envelope::now_ms;
use action_event_test_support::rabbit_node::{self, RabbitNode};

/// A private node, or `None` after a loud message when none can be started
/// and `ACTION_EVENT_REQUIRE_AMQP` is not `1`.
fn private_node() -> Option<RabbitNode> {
    if !rabbit_node::available_or_skip() {
        return None;
    }
    Some(RabbitNode::start(""))
}

/// Poller processes, killed if still running when dropped: a failing test
/// leaves none behind.
struct Pollers(Vec<Child>);

impl Drop for Pollers {
    fn drop(&mut self) {
        for p in &mut self.0 {
            if matches!(p.try_wait(), Ok(None)) {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
    }
}

/// Starts a poller at the default log level (no `RUST_LOG`), its output in `log`.
fn spawn_default_log(w: &World, log: &str, args: &[&str]) -> Child {
    let file = std::fs::File::create(w.path().join(log)).expect("log file");
    let out = file.try_clone().expect("log handle");
    w.poller(args)
        .env_remove("RUST_LOG")
        .stdout(out)
        .stderr(file)
        .spawn()
        .expect("spawn poller")
}

fn ends(w: &World, prefix: &str) -> usize {
    w.records()
        .iter()
        .filter(|r| r.what == "end" && r.tag.starts_with(prefix))
        .count()
}

/// The lines of `log` at `level` (`ERROR`, `WARN`, `INFO`).
fn at_level<'a>(log: &'a str, level: &str) -> Vec<&'a str> {
    let marker = format!(" {level} ");
    log.lines().filter(|l| l.contains(&marker)).collect()
}

#[test]
fn a_poller_stopped_right_after_a_connection_reset_exits_once_its_handlers_finish() {
    stopped_after_a_reset(|node| node.close_all_connections(), "close_all_connections");
}

#[test]
fn a_poller_stopped_while_the_broker_is_down_exits_once_its_handlers_finish() {
    stopped_after_a_reset(|node| node.stop_app(), "stop_app");
}

/// Three events that run 8 s each; `reset` runs while they run and the
/// poller is told to stop (SIGTERM) right after: it must exit within 1 s
/// after its last handler finished. (8 s: `rabbitmqctl stop_app` alone
/// took more than 3 s on a loaded machine, and the handlers had finished
/// before the broker went down.)
fn stopped_after_a_reset(reset: impl FnOnce(&RabbitNode), what: &str) {
    let Some(node) = private_node() else { return };
    let w = World::amqp_at(&node.url());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut pollers = Pollers(vec![
        w.spawn("p.log", &["--concurrency", "8", "--queues", "medium"]),
    ]);
    // Warm up: the poller is connected and taking.
    rt.block_on(w.queue_records(2, "medium", "warm", 0));
    w.wait_records(Duration::from_secs(60), "the warm-up events", |_| {
        ends(&w, "warm-") == 2
    });
    rt.block_on(w.queue_records(3, "medium", "slow", 8000));
    w.wait_records(Duration::from_secs(30), "the slow events to start", |r| {
        r.iter()
            .filter(|r| r.what == "start" && r.tag.starts_with("slow-"))
            .count()
            == 3
    });
    reset(&node);
    let reset_done = now_ms();
    let p = &mut pollers.0[0];
    send_signal(p, SIGTERM);
    let status = wait_child(p, Duration::from_secs(60), "the poller");
    let exited = now_ms();
    let log = w.log("p.log");
    assert!(status.success(), "the poller failed:\n{log}");
    let last_end = w
        .records()
        .iter()
        .filter(|r| r.what == "end" && r.tag.starts_with("slow-"))
        .map(|r| r.ms)
        .max()
        .unwrap_or_else(|| panic!("the slow events never ended:\n{log}"));
    // At least once: a redelivered one may be taken just before the stop.
    assert!(
        ends(&w, "slow-") >= 3,
        "every handler in hand finishes:\n{log}"
    );
    assert!(
        last_end > reset_done,
        "{what} ended at {reset_done}, after the handlers ({last_end}): the broker did not go \
         away while they ran, so this run shows nothing\n{log}"
    );
    let after = exited.saturating_sub(last_end);
    eprintln!("{what}: the poller exited {after} ms after its last handler finished");
    assert!(
        after < 1000,
        "{what}: the poller exited {after} ms after its handlers finished (limit 1000 ms): it \
         waited on acks to a connection that is gone\n{log}"
    );
}

#[test]
fn pollers_take_events_again_within_a_second_of_start_app() {
    let Some(node) = private_node() else { return };
    // Prefetch 1: neither poller buffers the other's share.
    let w = World::amqp_at(&format!("{}?prefetch=1", node.url()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut pollers = Pollers(
        (0..2)
            .map(|i| {
                w.spawn(
                    &format!("p{i}.log"),
                    &["--concurrency", "1", "--queues", "medium"],
                )
            })
            .collect(),
    );
    let pids: Vec<u32> = pollers.0.iter().map(|p| p.id()).collect();
    // Both pollers connected and taking.
    rt.block_on(w.queue_records(20, "medium", "before", 100));
    w.wait_records(Duration::from_secs(60), "both pollers to take", |r| {
        pids.iter().all(|pid| {
            r.iter()
                .any(|r| r.what == "end" && r.pid == *pid && r.tag.starts_with("before-"))
        })
    });
    w.wait_records(Duration::from_secs(60), "the first events to end", |_| {
        ends(&w, "before-") == 20
    });
    node.stop_app_until_closed();
    let down = Instant::now();
    // Long enough for a back-off doubling from 200 ms to reach its top.
    std::thread::sleep(Duration::from_secs(8));
    node.start_app();
    let up = now_ms();
    eprintln!(
        "outage: {:?}; start_app returned (the broker is up)",
        down.elapsed()
    );
    rt.block_on(w.queue_records(20, "medium", "after", 300));
    let records = w.wait_records(Duration::from_secs(60), "both pollers to take again", |r| {
        pids.iter().all(|pid| {
            r.iter()
                .any(|r| r.what == "start" && r.pid == *pid && r.tag.starts_with("after-"))
        })
    });
    let mut worst = 0;
    for (i, pid) in pids.iter().enumerate() {
        let first = records
            .iter()
            .filter(|r| r.what == "start" && r.pid == *pid && r.tag.starts_with("after-"))
            .map(|r| r.ms)
            .min()
            .expect("a start");
        let lag = first.saturating_sub(up);
        eprintln!("poller {i} took an event again {lag} ms after the broker was up");
        worst = worst.max(lag);
    }
    assert!(
        worst < 1000,
        "a poller took an event again only {worst} ms after the broker was up (limit 1000 ms)\n\
         --- p0.log ---\n{}\n--- p1.log ---\n{}",
        w.log("p0.log"),
        w.log("p1.log")
    );
    for p in &mut pollers.0 {
        send_signal(p, SIGTERM);
    }
    for p in &mut pollers.0 {
        assert!(wait_child(p, Duration::from_secs(60), "poller").success());
    }
}

#[test]
fn a_forced_connection_close_logs_one_warn_one_info_and_no_error() {
    let Some(node) = private_node() else { return };
    let w = World::amqp_at(&node.url());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut pollers = Pollers(vec![spawn_default_log(
        &w,
        "p.log",
        &["--concurrency", "4", "--queues", "medium"],
    )]);
    rt.block_on(w.queue_records(4, "medium", "before", 0));
    w.wait_records(Duration::from_secs(60), "the first events", |_| {
        ends(&w, "before-") == 4
    });
    // The status connection is up too (it answers `poller status`).
    std::thread::sleep(Duration::from_secs(1));
    let before = w.log("p.log");
    assert!(
        at_level(&before, "WARN").is_empty() && at_level(&before, "ERROR").is_empty(),
        "a clean start logs no WARN nor ERROR:\n{before}"
    );
    // Events running while the connections go: their acks are lost.
    rt.block_on(w.queue_records(4, "medium", "during", 1500));
    w.wait_records(Duration::from_secs(30), "events to run", |r| {
        r.iter()
            .any(|r| r.what == "start" && r.tag.starts_with("during-"))
    });
    node.close_all_connections();
    // Back: new events run, and every connection (consume, publish,
    // status) had time to come back.
    rt.block_on(w.queue_records(4, "medium", "after", 0));
    w.wait_records(Duration::from_secs(60), "events after the close", |_| {
        ends(&w, "after-") == 4 && ends(&w, "during-") >= 4
    });
    std::thread::sleep(Duration::from_secs(3));
    let all = w.log("p.log");
    // What was logged since the clean start (`before`).
    let log = all.get(before.len()..).unwrap_or_default();
    let (errors, warns, infos) = (
        at_level(log, "ERROR"),
        at_level(log, "WARN"),
        at_level(log, "INFO"),
    );
    let back: Vec<&&str> = infos
        .iter()
        .filter(|l| l.contains("RabbitMQ") && !l.contains("Processing"))
        .collect();
    eprintln!(
        "after close_all_connections: {} ERROR, {} WARN, {} INFO about RabbitMQ",
        errors.len(),
        warns.len(),
        back.len()
    );
    for l in warns.iter().chain(back.iter().copied()) {
        eprintln!("  {l}");
    }
    assert!(
        errors.is_empty(),
        "ERROR lines at the default level:\n{all}"
    );
    assert_eq!(
        warns.len(),
        1,
        "one WARN line for the lost connection:\n{all}"
    );
    assert_eq!(back.len(), 1, "one INFO line when it is back:\n{all}");
    let p = &mut pollers.0[0];
    send_signal(p, SIGTERM);
    assert!(wait_child(p, Duration::from_secs(60), "poller").success());
}
