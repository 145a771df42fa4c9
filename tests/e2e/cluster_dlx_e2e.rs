//! Phases of `cluster_e2e` on RabbitMQ's own dead-lettering with quorum
//! queues (`x-dead-letter-strategy=at-least-once`), the hole classic queues
//! leave open: a node dies while many events are on their way
//!
//! - out of the delay ladder back to their work queue
//!   ([`delays_due_at_a_kill`]): 2,000 delayed events due within about a
//!   second, the node leading the ladder level (and the work queue) killed
//!   (`kill -9`) inside that second, the poller on another node;
//! - out of a retry's delay, and into the dead letters after their last
//!   attempt ([`final_moves_at_a_kill`]): 1,000 events that fail once then
//!   succeed and 1,000 that always fail, the node leading the work queue
//!   and the dead queue killed while half of the latter are being buried.
//!
//! Every event ran (or is in the dead letters); duplicates are counted and
//! printed. The killed node is restarted before the phase ends. The poller
//! runs the stall check (`management=`), asserted by `cluster_stall`: it
//! reports RabbitMQ 3.10.8's stalled dead-letter worker when that happens,
//! and nothing when it does not.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cluster_e2e::{Pollers, prefix_of, spawn_on, wait_leader, world};
use crate::cluster_stall::{StallCheck, management};
use crate::common::*;
use action_event::envelope::now_ms;
use action_event::{Client, EventId, QueueRequest};
use action_event_test_support::rabbit_cluster::RabbitCluster;

/// What one send made: the tag, and the request.
type Make = dyn Fn(usize, usize) -> (String, QueueRequest) + Send + Sync;

/// An event whose `queue!` returned Ok: its id and when its request was
/// built (`now_ms`, the base of its delay).
#[derive(Clone, Copy)]
struct Sent {
    id: EventId,
    built: u64,
}

/// Sends `make(i, attempt)` for `i` in `0..n` from 32 tasks on one client
/// (each `queue!` awaited, confirmed); a failed send is counted and sent
/// again as the next attempt (a new tag). Returns tag -> [`Sent`], failures.
async fn send_all(url: &str, n: usize, make: Arc<Make>) -> (HashMap<String, Sent>, usize) {
    let client = Client::connect(url).await.expect("connect");
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, next, failed, make) =
            (client.clone(), next.clone(), failed.clone(), make.clone());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return out;
                }
                for attempt in 1.. {
                    let built = now_ms();
                    let (tag, req) = make(i, attempt);
                    match client.send(req).await {
                        Ok(id) => {
                            out.push((tag, Sent { id, built }));
                            break;
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            eprintln!("queue! failed (sent again under a new tag): {e}");
                        }
                    }
                }
            }
        });
    }
    let mut sent = HashMap::new();
    while let Some(r) = set.join_next().await {
        sent.extend(r.expect("producer task"));
    }
    (sent, failed.load(Ordering::SeqCst))
}

/// A node other than those in `busy` (the first one, in order).
fn other_than(cluster: &RabbitCluster, busy: &[usize]) -> usize {
    (0..cluster.len())
        .find(|i| !busy.contains(i))
        .unwrap_or((busy[0] + 1) % cluster.len())
}

/// Sleeps until `now_ms() >= at`.
fn sleep_until_ms(at: u64) {
    let now = now_ms();
    if at > now {
        std::thread::sleep(Duration::from_millis(at - now));
    }
}

/// 2,000 delayed events, due within about a second, while the node leading
/// their delay level dies: all run. See the module docs.
pub(crate) fn delays_due_at_a_kill(cluster: &mut RabbitCluster) {
    const N: usize = 2_000;
    const DELAY_MS: u64 = 10_000;
    // The producer lists node 0 first: its first sends declare the work
    // queue and the ladder level there (RabbitMQ 3.10 puts a quorum
    // queue's leader on the declaring client's node).
    let w = world(cluster, 0, &format!("&prefetch=64{}", management(cluster)));
    let prefix = prefix_of(&w);
    let (queue, level) = (
        format!("{prefix}medium"),
        format!("{prefix}delay.{DELAY_MS}"),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let t = Instant::now();
    let make: Arc<Make> = Arc::new(|i, a| {
        let tag = format!("due-{i}-{a}");
        let req = QueueRequest::foreign("record")
            .param("tag", &tag)
            .queue("medium")
            .delay(Duration::from_millis(DELAY_MS));
        (tag, req)
    });
    let (sent, failed) = rt.block_on(send_all(&w.url, N, make));
    let produced = t.elapsed();
    let mut due: Vec<u64> = sent.values().map(|s| s.built + DELAY_MS).collect();
    due.sort_unstable();
    let (first, last) = (due[0], due[N - 1]);
    let ladder_leader = wait_leader(cluster, &level);
    let target_leader = wait_leader(cluster, &queue);
    let p = other_than(cluster, &[ladder_leader, target_leader]);
    assert!(
        now_ms() + 2_000 < first,
        "the events were due before the kill could be set up (produced in {produced:?})"
    );
    let mut pollers = Pollers(vec![spawn_on(
        cluster,
        &w,
        p,
        "p.log",
        &["--concurrency", "16", "--queues", "medium"],
    )]);
    // Kill once a quarter of them are due: the rest expire (and are
    // dead-lettered) while the ladder's leadership moves.
    let kill_at = due[N / 4];
    sleep_until_ms(kill_at);
    cluster.node_mut(ladder_leader).kill_vm();
    let killed = now_ms();
    let check = StallCheck::new(&rt, &w, "p.log", Instant::now());
    let ran_before = ends_by_tag(&w.records()).len();
    eprintln!(
        "dead-lettering: {N} delayed events produced in {produced:?} ({failed} queue! errors), \
         due within {} ms; killed node {ladder_leader} (leader of {level}; {queue} led by node \
         {target_leader}; poller on node {p}) {} ms after the first was due, {ran_before} had run",
        last - first,
        killed - first
    );
    let limit = Instant::now() + Duration::from_secs(240);
    let mut stall: Option<(usize, u64)> = None;
    let mut reported: Option<(Vec<String>, Instant)> = None;
    let (ends, starts) = loop {
        let records = w.records();
        let ends = ends_by_tag(&records);
        let missing: Vec<&String> = sent.keys().filter(|t| !ends.contains_key(*t)).collect();
        if missing.is_empty() {
            break (ends, records);
        }
        if stall.is_none() && now_ms() > killed + 15_000 {
            // RabbitMQ 3.10.8: the dead-letter worker of the ladder level
            // may stall for good after the failover, its messages waiting
            // (counted, neither ready nor unacked) in the level's queue.
            // The operator's remedy: move the queue's leadership, which
            // starts a new worker. See the README (*What a cluster gives*).
            eprintln!(
                "dead-lettering: STALLED: 15 s after the kill {} events have not run; queues:\n{}\n\
                 dead-letter lines of the nodes' logs:\n{}",
                missing.len(),
                cluster.queue_table(&prefix),
                dlx_log(cluster),
            );
            let stuck = check.before_move(cluster);
            eprintln!(
                "dead-lettering: moving the leadership of the ladder:\n{}",
                restart_dlx_workers(cluster, &prefix)
            );
            reported = stuck.map(|q| (q, Instant::now()));
            stall = Some((missing.len(), now_ms()));
        }
        assert!(
            Instant::now() < limit,
            "dead-lettering: {} of {N} delayed events never ran within 240 s of the kill \
             (node {ladder_leader}, leader of {level}), e.g. {:?}; queues:\n{}\npoller log tail:\n{}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            cluster.queue_table(&prefix),
            tail(&w.log("p.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let dups: usize = ends.values().map(|n| n - 1).sum();
    let late = starts
        .iter()
        .filter(|r| r.what == "start")
        .filter_map(|r| {
            sent.get(&r.tag)
                .map(|s| r.ms.saturating_sub(s.built + DELAY_MS))
        })
        .max()
        .unwrap_or(0);
    let early = starts
        .iter()
        .filter(|r| r.what == "start")
        .filter(|r| sent.get(&r.tag).is_some_and(|s| r.ms < s.built + DELAY_MS))
        .count();
    let stalled = match stall {
        Some((n, moved)) => format!(
            "; the dead-letter worker had STALLED with {n} of them, which ran within {} ms of \
             the leadership move",
            starts
                .iter()
                .map(|r| r.ms)
                .max()
                .unwrap_or(moved)
                .saturating_sub(moved)
        ),
        None => String::new(),
    };
    eprintln!(
        "dead-lettering: all {N} delayed events ran, 0 lost, {dups} duplicate run(s), none early \
         ({early}), the latest {late} ms after its time{stalled}"
    );
    assert_eq!(early, 0, "{early} delayed events ran before their time");
    check_and_restart(cluster, &check, reported, ladder_leader);
    assert!(
        alive(&mut pollers.0[0]),
        "the poller exited:\n{}",
        w.log("p.log")
    );
    stop(&mut pollers.0[0], "poller");
}

/// The end of phases 6 and 7, the poller still running: after a stall
/// ([`StallCheck::before_move`] named `reported`, then moved at the
/// instant given), its report clears; without one, nothing is reported
/// 35 s after the kill (the node `killed` restarts meanwhile). Then that
/// node is up again.
fn check_and_restart(
    cluster: &mut RabbitCluster,
    check: &StallCheck,
    reported: Option<(Vec<String>, Instant)>,
    killed: usize,
) {
    match reported {
        Some((queues, moved)) => {
            check.after_move(cluster, &queues, moved);
            cluster.node_mut(killed).restart_vm();
            cluster.wait_running(3);
        }
        None => {
            cluster.node_mut(killed).restart_vm();
            cluster.wait_running(3);
            check.quiet();
        }
    }
}

/// 1,000 events that fail once (their retry waits in the ladder) and 1,000
/// that always fail (buried in the dead letters after their second
/// attempt) while the node leading the work queue and the dead queue dies:
/// every event ran or is dead. See the module docs.
pub(crate) fn final_moves_at_a_kill(cluster: &mut RabbitCluster) {
    const N: usize = 1_000;
    let w = world(cluster, 1, &format!("&prefetch=64{}", management(cluster)));
    let prefix = prefix_of(&w);
    let (queue, dead) = (format!("{prefix}medium"), format!("{prefix}dead"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Declared from node 1: the dead queue (listing it declares it) and
    // the work queue (the first sends).
    rt.block_on(w.dead());
    let make: Arc<Make> = Arc::new(|i, a| {
        if i % 2 == 0 {
            let tag = format!("flaky-{i}-{a}");
            let req = QueueRequest::foreign("flaky")
                .param("tag", &tag)
                .param("fail_times", 1)
                .queue("medium");
            (tag, req)
        } else {
            let tag = format!("boom-{i}-{a}");
            let req = QueueRequest::foreign("boom")
                .param("tag", &tag)
                .queue("medium");
            (tag, req)
        }
    });
    let (sent, failed) = rt.block_on(send_all(&w.url, 2 * N, make));
    let k = wait_leader(cluster, &dead);
    let target = wait_leader(cluster, &queue);
    let p = other_than(cluster, &[k, target]);
    let mut pollers = Pollers(vec![spawn_on(
        cluster,
        &w,
        p,
        "p.log",
        &[
            "--concurrency",
            "16",
            "--queues",
            "medium",
            "--retry-base",
            "2s",
        ],
    )]);
    // Kill once half of the always-failing events started their last
    // attempt: retries are expiring into the work queue, and the poller
    // is burying events in the dead queue.
    let last_attempts = |r: &[Record]| {
        r.iter()
            .filter(|r| r.what == "start" && r.attempt == 2 && r.tag.starts_with("boom"))
            .count()
    };
    let limit = Instant::now() + Duration::from_secs(120);
    while last_attempts(&w.records()) < N / 2 {
        assert!(
            Instant::now() < limit,
            "final moves: half the failing events never reached their last attempt in 120 s \
             ({}); queues:\n{}\ndead-letter lines of the nodes' logs:\n{}\npoller log tail:\n{}",
            census(&w.records()),
            cluster.queue_table(&prefix),
            dlx_log(cluster),
            tail(&w.log("p.log"))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.node_mut(k).kill_vm();
    let check = StallCheck::new(&rt, &w, "p.log", Instant::now());
    let records = w.records();
    let (retried, buried) = (
        records
            .iter()
            .filter(|r| r.what == "end" && r.tag.starts_with("flaky"))
            .count(),
        last_attempts(&records),
    );
    eprintln!(
        "final moves: {} events ({failed} queue! errors); killed node {k} (leader of {dead}; \
         {queue} led by node {target}; poller on node {p}) when {retried} retried events had \
         run and {buried} failing ones had started their last attempt",
        sent.len()
    );
    let flaky: Vec<&String> = sent.keys().filter(|t| t.starts_with("flaky")).collect();
    let boom: HashMap<String, &String> = sent
        .iter()
        .filter(|(t, _)| t.starts_with("boom"))
        .map(|(t, s)| (s.id.to_string(), t))
        .collect();
    let limit = Instant::now() + Duration::from_secs(180);
    let kill = Instant::now();
    let mut stall: Option<Instant> = None;
    let mut reported: Option<(Vec<String>, Instant)> = None;
    let (ends, dead_events) = loop {
        let ends = ends_by_tag(&w.records());
        let ran_all = flaky.iter().all(|t| ends.contains_key(*t));
        let dead_events = if ran_all {
            rt.block_on(w.dead())
        } else {
            Vec::new()
        };
        let missing_dead = boom
            .keys()
            .filter(|id| !dead_events.iter().any(|d| &d.id == *id))
            .count();
        if ran_all && missing_dead == 0 {
            break (ends, dead_events);
        }
        if stall.is_none() && kill.elapsed() > Duration::from_secs(20) {
            eprintln!(
                "final moves: STALLED: 20 s after the kill {} retried events have not run, {} \
                 failing events are not dead ({}); queues:\n{}",
                flaky.iter().filter(|t| !ends.contains_key(**t)).count(),
                if ran_all {
                    missing_dead.to_string()
                } else {
                    "?".into()
                },
                census(&w.records()),
                cluster.queue_table(&prefix),
            );
            let stuck = check.before_move(cluster);
            eprintln!(
                "final moves: moving the leadership of the ladder:\n{}",
                restart_dlx_workers(cluster, &prefix)
            );
            reported = stuck.map(|q| (q, Instant::now()));
            stall = Some(Instant::now());
        }
        assert!(
            Instant::now() < limit,
            "final moves: within 180 s of the kill, {} of {N} retried events never ran and {} \
             of {N} failing events are not in the dead letters; poller log tail:\n{}",
            flaky.iter().filter(|t| !ends.contains_key(**t)).count(),
            if ran_all {
                missing_dead.to_string()
            } else {
                "(not listed yet)".into()
            },
            tail(&w.log("p.log"))
        );
        std::thread::sleep(Duration::from_millis(1_000));
    };
    let run_twice: usize = flaky.iter().map(|t| ends[*t] - 1).sum();
    let mut dead_count: HashMap<&str, usize> = HashMap::new();
    for d in &dead_events {
        *dead_count.entry(d.id.as_str()).or_default() += 1;
    }
    let dead_twice: usize = dead_count.values().map(|n| n - 1).sum();
    let strays: Vec<&str> = dead_count
        .keys()
        .filter(|id| !boom.contains_key(**id))
        .copied()
        .collect();
    eprintln!(
        "final moves: all {N} retried events ran ({run_twice} duplicate run(s)), all {N} failing \
         events are in the dead letters ({dead_twice} duplicate dead letter(s)), 0 lost, {:?} \
         after the kill{}",
        kill.elapsed(),
        match stall {
            Some(at) => format!(
                " (the dead-letter worker had STALLED; done {:?} after the leadership move)",
                at.elapsed()
            ),
            None => String::new(),
        }
    );
    assert!(
        strays.is_empty(),
        "events that succeed on their retry are in the dead letters: {strays:?}"
    );
    assert!(
        dead_events.iter().all(|d| d.attempts == 2
            && d.errors
                .last()
                .is_some_and(|e| e.message.contains("panicked: boom in"))),
        "every dead letter is the failing event after its 2 attempts, naming its panic"
    );
    check_and_restart(cluster, &check, reported, k);
    assert!(
        alive(&mut pollers.0[0]),
        "the poller exited:\n{}",
        w.log("p.log")
    );
    stop(&mut pollers.0[0], "poller");
}

/// The lines about dead-lettering in the live nodes' logs.
pub(crate) fn dlx_log(cluster: &RabbitCluster) -> String {
    let mut out = String::new();
    for i in 0..cluster.len() {
        for l in cluster.node(i).log().lines() {
            if l.contains("dlx") || l.contains("dead-letter") || l.contains("dead letter") {
                out.push_str(&format!("node {i}: {l}\n"));
            }
        }
    }
    out
}

/// RabbitMQ 3.10.8's remedy for a stalled at-least-once dead-letter
/// worker: after the leader of a quorum queue's dead-letter *target* died
/// while the worker had messages in flight to it, the worker waits for
/// their confirms for good (measured: 240 s), and the queue's expired
/// messages stay there (counted, neither ready nor unacked). Moving the
/// source queue's leadership to another node starts a new worker, which
/// sends them again. Done for every delay level and hold queue of
/// `prefix`; returns what was moved.
pub(crate) fn restart_dlx_workers(cluster: &RabbitCluster, prefix: &str) -> String {
    let mut out = String::new();
    let queues = cluster
        .leaders(&format!("{prefix}delay."))
        .into_iter()
        .chain(cluster.leaders(&format!("{prefix}hold.")));
    for (q, leader) in queues {
        let Some(from) = leader else { continue };
        let to = (1..cluster.len())
            .map(|d| (from + d) % cluster.len())
            .find(|i| cluster.node(*i).accepts());
        if let Some(to) = to {
            let answer = cluster.transfer_leadership(&q, from, to);
            out.push_str(&format!("{q}: node {from} -> node {to}: {answer}\n"));
        }
    }
    out
}

/// Records counted by (kind of tag, what, attempt), for assertion messages.
fn census(records: &[Record]) -> String {
    let mut n: std::collections::BTreeMap<(String, String, u32), usize> = Default::default();
    for r in records {
        let kind = r.tag.split('-').next().unwrap_or("").to_string();
        *n.entry((kind, r.what.clone(), r.attempt)).or_default() += 1;
    }
    format!("{n:?}")
}

/// The last 40 lines of a log.
pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
