//! RabbitMQ only, end to end, with real poller processes: strict priority
//! across two pollers (on the shared broker), and, each on a private broker
//! node of its own (`action_event_test_support::rabbit_node`), pollers
//! that outlive a cut of every connection or a broker restart in the middle
//! of a run, and a poller started while the broker is down.
//!
//! The private-node tests need `rabbitmq-server` installed; without it they
//! print `SKIPPED: ...` and pass, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use action_event_test_support::rabbit_node;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::*;
use rabbit_node::RabbitNode;

/// A private node, or `None` after a loud message when none can be started
/// and `ACTION_EVENT_REQUIRE_AMQP` is not `1`.
fn private_node() -> Option<RabbitNode> {
    if !rabbit_node::available_or_skip() {
        return None;
    }
    Some(RabbitNode::start(""))
}

/// Ends per tag; every tag `<tag>-0..n` must have at least one, and the
/// duplicates (at least once) are counted and printed.
fn check_all_done(w: &World, n: usize, tag: &str, what: &str) -> usize {
    let ends = ends_by_tag(&w.records());
    let mut missing = Vec::new();
    let mut dups = 0;
    for i in 0..n {
        match ends.get(&format!("{tag}-{i}")).copied().unwrap_or(0) {
            0 => missing.push(i),
            1 => {}
            k => dups += k - 1,
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    eprintln!("{what}: all {n} events processed");
    eprintln!("duplicates: {dups}");
    dups
}

/// 5,000 `record` events, two pollers at concurrency 8; `disrupt` runs once
/// 1,000 have ended. Then every event must end (at least once), and once the
/// queue is empty each poller must sit idle: under 1 s of CPU in 5 s.
fn disrupted_run(disrupt: impl FnOnce(&RabbitNode), what: &str) {
    let Some(node) = private_node() else { return };
    let w = World::amqp_at(&node.url());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let n = 5000;
    // 50 ms each, 16 at a time: the run takes 15 s or more, so the
    // disruption (rabbitmqctl takes seconds) lands in its middle.
    rt.block_on(w.queue_records(n, "medium", "e", 50));
    let mut pollers = Pollers(
        (0..2)
            .map(|i| {
                w.spawn(
                    &format!("p{i}.log"),
                    &["--concurrency", "8", "--queues", "medium"],
                )
            })
            .collect(),
    );
    w.wait_records(
        Duration::from_secs(180),
        "a first share of the events",
        |r| r.iter().filter(|r| r.what == "end").count() >= 1000,
    );
    disrupt(&node);
    let ended = |r: &[Record]| {
        r.iter()
            .filter(|r| r.what == "end")
            .map(|r| (r.tag.as_str(), ()))
            .collect::<HashMap<&str, ()>>()
            .len()
    };
    let at = ended(&w.records());
    eprintln!("{what}: done with {at} of {n} events ended");
    assert!(
        at < n,
        "{what}: the disruption landed after every event had ended: slow the events down"
    );
    let started = Instant::now();
    let limit = Duration::from_secs(240);
    loop {
        let done = ended(&w.records());
        if done >= n {
            break;
        }
        if started.elapsed() > limit {
            panic!(
                "{what}: only {done} of {n} events ended {limit:?} after the disruption\n\
                 --- p0.log (tail) ---\n{}\n--- p1.log (tail) ---\n{}",
                tail_of(&w.log("p0.log"), 40),
                tail_of(&w.log("p1.log"), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{what}: all {n} events ended {:?} after the disruption",
        started.elapsed()
    );
    // Redeliveries of events whose ack was lost may still be queued or
    // running: wait until the broker holds nothing and the records rest.
    let queue = format!("{}medium", prefix_of(&w.url));
    let settled = Instant::now();
    let mut last = w.records().len();
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = w.records().len();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        if quiet_since.elapsed() > Duration::from_secs(2) && node.ready(&queue) == Some(0) {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(60),
            "{what}: the queue never emptied"
        );
    }
    // No busy loop left behind: idle pollers use next to no CPU.
    let before: Vec<Duration> = pollers.0.iter().map(|p| cpu_time(p.id())).collect();
    std::thread::sleep(Duration::from_secs(5));
    for (i, p) in pollers.0.iter_mut().enumerate() {
        let used = cpu_time(p.id()).saturating_sub(before[i]);
        eprintln!("{what}: idle poller {i} used {used:?} of CPU in 5 s");
        assert!(
            used < Duration::from_secs(1),
            "{what}: idle poller {i} used {used:?} of CPU in 5 s (a busy loop?)\n{}",
            tail_of(&w.log(&format!("p{i}.log")), 40)
        );
        assert!(
            alive(p),
            "{what}: poller {i} exited:\n{}",
            w.log(&format!("p{i}.log"))
        );
        send_signal(p, SIGTERM);
    }
    for (i, p) in pollers.0.iter_mut().enumerate() {
        let status = wait_child(p, Duration::from_secs(60), "poller");
        assert!(
            status.success(),
            "{what}: poller {i}:\n{}",
            w.log(&format!("p{i}.log"))
        );
    }
    check_all_done(&w, n, "e", what);
}

/// Poller processes, killed if still running when dropped: a failing test
/// leaves none behind.
struct Pollers(Vec<std::process::Child>);

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

fn prefix_of(url: &str) -> String {
    url.split("prefix=")
        .nth(1)
        .and_then(|p| p.split('&').next())
        .expect("the test URL has a prefix")
        .to_string()
}

fn tail_of(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn close_all_connections_during_a_5000_event_run_loses_nothing() {
    disrupted_run(|node| node.close_all_connections(), "close_all_connections");
}

#[test]
fn broker_restart_during_a_5000_event_run_loses_nothing() {
    disrupted_run(
        |node| {
            node.stop_app();
            std::thread::sleep(Duration::from_secs(2));
            node.start_app();
        },
        "stop_app, 2 s, start_app",
    );
}

#[test]
fn a_poller_started_while_the_broker_is_down_waits_for_it() {
    let Some(node) = private_node() else { return };
    let w = World::amqp_at(&node.url());
    node.stop_app_until_closed();
    let mut pollers = Pollers(vec![w.spawn("p.log", &["--queues", "medium"])]);
    let p = &mut pollers.0[0];
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        p.try_wait().expect("try_wait").is_none(),
        "the poller must wait:\n{}",
        w.log("p.log")
    );
    let log = w.log("p.log");
    assert!(log.contains("waiting for it, retrying in"), "{log}");
    assert!(
        !log.contains("guest:guest"),
        "credentials in the log:\n{log}"
    );
    node.start_app();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(w.queue_records(3, "medium", "late", 0));
    w.wait_records(
        Duration::from_secs(60),
        "the poller to process after the broker came up",
        |r| r.iter().filter(|r| r.what == "end").count() == 3,
    );
    send_signal(p, SIGTERM);
    assert!(wait_child(p, Duration::from_secs(30), "poller").success());
}

#[test]
fn strict_priority_with_two_poller_processes() {
    if !amqp_available() {
        return;
    }
    let mut w = World::new(&Backend::Amqp);
    // Prefetch no larger than the concurrency (the module docs' advice), so
    // a poller holds few taken-but-unstarted events.
    w.url.push_str("&prefetch=4");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        w.queue_records(300, "low", "l", 0).await;
        w.queue_records(300, "medium", "m", 0).await;
        w.queue_records(300, "high", "h", 0).await;
    });
    let mut pollers: Vec<_> = (0..2)
        .map(|i| {
            w.spawn(
                &format!("p{i}.log"),
                &[
                    "--concurrency",
                    "4",
                    "--queues",
                    "high medium low",
                    "--exit-when-empty",
                ],
            )
        })
        .collect();
    for (i, p) in pollers.iter_mut().enumerate() {
        let status = wait_child(p, Duration::from_secs(120), "poller");
        assert!(status.success(), "{}", w.log(&format!("p{i}.log")));
    }
    // Each poller started its events in strict order.
    let mut all: Vec<(String, String)> = Vec::new();
    for i in 0..2 {
        let log = w.log(&format!("p{i}.log"));
        let order = processing_order(&log);
        let rank = |q: &str| match q {
            "high" => 0,
            "medium" => 1,
            _ => 2,
        };
        assert!(
            order.windows(2).all(|p| rank(&p[0]) <= rank(&p[1])),
            "poller {i} started out of priority order: {order:?}"
        );
        for l in log
            .lines()
            .filter(|l| l.contains(" Processing ") && !l.contains("queues:"))
        {
            let ts = l.split_whitespace().next().unwrap_or_default().to_string();
            let q = processing_order(l).pop().unwrap_or_default();
            all.push((ts, q));
        }
    }
    // Across both: a high may start after the other poller's first medium
    // only if it was already taken (held, not ready in the broker): at most
    // the other poller's prefetch + concurrency.
    all.sort();
    let first_medium = all
        .iter()
        .position(|(_, q)| q == "medium")
        .expect("mediums");
    let late_highs = all[first_medium..]
        .iter()
        .filter(|(_, q)| q == "high")
        .count();
    let first_low = all.iter().position(|(_, q)| q == "low").expect("lows");
    let late_mediums = all[first_low..]
        .iter()
        .filter(|(_, q)| q == "medium")
        .count();
    eprintln!(
        "two pollers: {late_highs} high(s) started after the first medium, {late_mediums} medium(s) after the first low"
    );
    assert!(
        late_highs <= 8 && late_mediums <= 8,
        "{late_highs} highs after a medium, {late_mediums} mediums after a low"
    );
    let ends = ends_by_tag(&w.records());
    assert_eq!(ends.len(), 900);
}
