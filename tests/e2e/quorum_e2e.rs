//! Quorum queues (`queue_type=quorum`) on one broker, end to end, with real
//! poller processes:
//!
//! - an event that aborts its poller process every time is dead after the
//!   URL's `delivery_limit` deliveries, with a reason that says so;
//! - a URL asking for quorum queues where classic ones exist fails with an
//!   error naming the queue and the migration path, and that path (a new
//!   `prefix`, the old pollers draining the old queues) loses nothing.
//!
//! On the shared broker (unique prefixes). Without RabbitMQ they print
//! `SKIPPED: ...` and pass, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn an_event_that_aborts_its_poller_is_dead_after_the_delivery_limit() {
    if !amqp_available() {
        return;
    }
    let mut w = World::new(&Backend::Amqp);
    w.url
        .push_str("&queue_type=quorum&delivery_limit=3&prefetch=1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let id = rt.block_on(w.queue_json("abort", "medium", serde_json::json!({"tag": "poison"})));
    // A poller that dies is started again, as a supervisor would, until
    // the event is dead (or 8 pollers died: no bound).
    let started = Instant::now();
    let mut deaths = 0;
    let dead = loop {
        let mut p = w.spawn(
            &format!("p{deaths}.log"),
            &["--queues", "medium", "--concurrency", "1"],
        );
        // It either aborts (the event ran) or lives on (the event is dead).
        let until = Instant::now() + Duration::from_secs(30);
        let mut exited = None;
        while Instant::now() < until {
            if let Ok(Some(st)) = p.try_wait() {
                exited = Some(st);
                break;
            }
            let d = rt.block_on(w.dead());
            if d.iter().any(|d| d.id == id.to_string()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match exited {
            Some(st) => {
                assert!(!st.success(), "the poller aborted: {st:?}");
                deaths += 1;
                assert!(
                    deaths <= 8,
                    "the poison event was delivered {deaths} times and is not dead; records: {:?}",
                    w.records()
                );
            }
            None => {
                let d = rt.block_on(w.dead());
                stop(&mut p, "the poller that buried the event");
                break d;
            }
        }
    };
    let ev = dead
        .iter()
        .find(|d| d.id == id.to_string())
        .expect("the poison event in the dead letters");
    let starts = of_tag(&w.records(), "poison")
        .iter()
        .filter(|r| r.what == "start")
        .count();
    eprintln!(
        "poison event: {starts} runs, {deaths} poller deaths, dead after {:?}: {}",
        started.elapsed(),
        ev.reason
    );
    assert_eq!(starts, 3, "it ran exactly delivery_limit times");
    assert_eq!(deaths, 3);
    assert_eq!(ev.name.as_deref(), Some("abort"));
    assert!(
        ev.reason.contains("delivered 3 times without finishing")
            && ev.reason.contains("delivery_limit=3"),
        "{}",
        ev.reason
    );
}

#[test]
fn classic_to_quorum_is_refused_with_the_way_to_migrate_which_loses_nothing() {
    if !amqp_available() {
        return;
    }
    let old = World::new(&Backend::Amqp);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(old.queue_records(200, "medium", "old", 0));
    // The same prefix with quorum queues: refused, naming queue and fix.
    let same = format!("{}&queue_type=quorum", old.url);
    let err = rt
        .block_on(async {
            action_event::Client::connect(&same)
                .await?
                .send(
                    action_event::QueueRequest::foreign("record")
                        .param("tag", "x")
                        .queue("medium"),
                )
                .await
        })
        .expect_err("declaring a classic queue as quorum fails");
    let text = err.to_string();
    eprintln!("classic -> quorum under one prefix: {text}");
    assert!(
        text.contains("medium`") && text.contains("another queue type"),
        "{text}"
    );
    assert!(
        text.contains("new `prefix`") && text.contains("Moving from classic to quorum queues"),
        "{text}"
    );
    // The migration: producers move to a new prefix with quorum queues;
    // one poller stays on the old URL until its queues are empty.
    let mut new = World::new(&Backend::Amqp);
    new.url.push_str("&queue_type=quorum");
    new.record = old.record.clone();
    let mut drain_old = old.spawn("old.log", &["--queues", "medium", "--exit-when-empty"]);
    let mut serve_new = new.spawn("new.log", &["--queues", "medium", "--concurrency", "4"]);
    rt.block_on(new.queue_records(200, "medium", "new", 0));
    let st = wait_child(&mut drain_old, Duration::from_secs(120), "the old poller");
    assert!(st.success(), "{}", old.log("old.log"));
    new.wait_records(Duration::from_secs(120), "all 400 events", |r| {
        r.iter().filter(|r| r.what == "end").count() >= 400
    });
    stop(&mut serve_new, "the new poller");
    let ends = ends_by_tag(&old.records());
    let lost: Vec<String> = (0..200)
        .flat_map(|i| [format!("old-{i}"), format!("new-{i}")])
        .filter(|t| !ends.contains_key(t))
        .collect();
    assert!(lost.is_empty(), "lost in the migration: {lost:?}");
    assert_eq!(ends.len(), 400);
}

/// Long events on quorum queues: past a third of `consumer_timeout` the
/// event is renewed through a *quorum* hold queue (at-least-once
/// dead-lettering), and when its poller is killed with SIGKILL it comes
/// back to its work queue from there and runs again on another poller.
/// On a private node with a 3 s `consumer_timeout` (as consumer_timeout_e2e).
#[test]
fn a_held_event_on_quorum_queues_runs_again_after_a_sigkill() {
    use action_event_test_support::rabbit_node::{self, RabbitNode};
    if !rabbit_node::available_or_skip() {
        return;
    }
    let node = RabbitNode::start("consumer_timeout = 3000");
    node.ctl_ok(&[
        "eval",
        "application:set_env(rabbit, channel_tick_interval, 500).",
    ]);
    let mut w = World::new(&Backend::Amqp);
    w.url = format!(
        "{}?prefix=qh.&consumer_timeout=3s&queue_type=quorum",
        node.url()
    );
    // Hold queues, with their type. (Not by their unacked count: a quorum
    // queue reports counts only every few seconds.)
    let held = || -> Vec<(String, String)> {
        node.ctl_ok(&["list_queues", "name", "type", "--no-table-headers"])
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (name, kind) = (it.next()?, it.next()?);
                name.starts_with("qh.hold.")
                    .then(|| (name.to_string(), kind.to_string()))
            })
            .collect()
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(w.queue_records(1, "medium", "long", 30_000));
    let mut p = w.spawn("p.log", &["--queues", "medium"]);
    w.wait_records(Duration::from_secs(30), "the long event to start", |r| {
        r.iter().any(|r| r.tag == "long-0")
    });
    let until = Instant::now() + Duration::from_secs(25);
    let holds = loop {
        let h = held();
        if !h.is_empty() {
            break h;
        }
        assert!(
            Instant::now() < until,
            "never held in a hold queue:\n{}",
            w.log("p.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        holds.iter().all(|(_, kind)| kind == "quorum"),
        "hold queues are quorum queues: {holds:?}"
    );
    send_signal(&p, SIGKILL);
    let _ = p.wait();
    let killed = Instant::now();
    let mut q = w.spawn("q.log", &["--queues", "medium"]);
    let records = w.wait_records(Duration::from_secs(90), "the event to run again", |r| {
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
    eprintln!(
        "quorum hold queue {:?}: the held event ended on the second poller {back:?} after the kill (30 s handler)",
        holds[0].0
    );
}
