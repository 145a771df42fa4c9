//! A 3-node RabbitMQ cluster with quorum queues (`queue_type=quorum`, every
//! node in the URL), end to end, with real poller processes. One private
//! cluster (`action_event_test_support::rabbit_cluster`) serves the whole
//! run, one phase after another, each with its own prefix:
//!
//! 1. strict priority 300/300/300 on quorum queues;
//! 2. 20,000 events produced with confirms while 2 pollers drain; at 30 %
//!    the node leading the work queue is killed (`kill -9` of its VM): every
//!    `queue!` that returned Ok ran (duplicates counted), and the producer and
//!    both pollers go on, on the other nodes, within 10 s;
//! 3. strict priority again right after that failover (2 nodes up);
//! 4. a delayed event and a retrying event survive the death of the node
//!    leading their delay queues, and run at their time;
//! 5. a rolling restart of all three nodes, one at a time, while events are
//!    produced and drained: 0 lost;
//! 6. 2,000 delayed events due within about a second, the node leading
//!    their delay level killed in that second: all run (`cluster_dlx_e2e`);
//! 7. retries expiring and failing events being buried in the dead letters
//!    while the node leading the work and dead queues is killed: every event
//!    ran or is dead (`cluster_dlx_e2e`);
//!    in 6 and 7, the stall check (every node runs the management API)
//!    reports RabbitMQ 3.10.8's stalled dead-lettering when it happens
//!    and nothing otherwise (`cluster_stall`);
//! 8. with a 4 s `consumer_timeout` on every node, a 10 s event while the
//!    leader of its work queue dies, then while its poller's node dies:
//!    renewals go on, nothing lost (`cluster_timeout_e2e`);
//! 9. bursts of delayed events from 16 connections into delay levels that
//!    do not exist yet: all come back on time (`cluster_ttl_e2e`).
//!
//! Each phase prints what it measured and how long it took;
//! `ACTION_EVENT_CLUSTER_PHASES=6,7` runs only those (while working on
//! one). Without `rabbitmq-server` installed it prints `SKIPPED: ...` and
//! passes, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use std::collections::HashMap;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use action_event::envelope::now_ms;
use action_event::{Client, QueueRequest};
use action_event_test_support::rabbit_cluster::RabbitCluster;
use action_event_test_support::rabbit_node;

/// Poller processes, killed if still running when dropped.
pub(crate) struct Pollers(pub(crate) Vec<Child>);

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

/// A phase of the cluster test: what it shows, and the function.
type Phase = (&'static str, fn(&mut RabbitCluster));

#[test]
fn a_three_node_cluster_with_quorum_queues_loses_nothing() {
    if !rabbit_node::available_or_skip() {
        return;
    }
    let t0 = Instant::now();
    // The management API on every node: phases 6 and 7 assert the stall
    // check (`cluster_stall`).
    let mut cluster = RabbitCluster::start_with_management(3, "");
    eprintln!("cluster of 3 up in {:?}", t0.elapsed());
    // `ACTION_EVENT_CLUSTER_PHASES=6,7,8` runs only those phases (while
    // working on one); CI runs them all.
    let only = std::env::var("ACTION_EVENT_CLUSTER_PHASES").unwrap_or_default();
    let phases: [Phase; 9] = [
        ("priority", |c| priority(c, "on quorum queues")),
        ("20,000 + kill -9", failover_under_load),
        ("priority after failover", |c| {
            priority(c, "right after a failover")
        }),
        ("delayed + retrying", delays_survive),
        ("rolling restart", rolling_restart),
        (
            "2,000 delays due at a kill",
            crate::cluster_dlx_e2e::delays_due_at_a_kill,
        ),
        (
            "retries and dead letters at a kill",
            crate::cluster_dlx_e2e::final_moves_at_a_kill,
        ),
        (
            "consumer_timeout renewals through failovers",
            crate::cluster_timeout_e2e::renewals_through_a_failover,
        ),
        (
            "bursts into new delay levels",
            crate::cluster_ttl_e2e::bursts_into_new_delay_levels,
        ),
    ];
    for (i, (what, run)) in phases.iter().enumerate() {
        let n = (i + 1).to_string();
        if !only.is_empty() && !only.split(',').any(|p| p.trim() == n) {
            continue;
        }
        let phase = Instant::now();
        run(&mut cluster);
        eprintln!("phase {n} ({what}) {:?}", phase.elapsed());
    }
    eprintln!("cluster test total {:?}", t0.elapsed());
    let t = Instant::now();
    drop(cluster);
    eprintln!("cluster stopped in {:?}", t.elapsed());
}

/// A world on the cluster, quorum queues, every live node in the URL.
pub(crate) fn world(cluster: &RabbitCluster, first: usize, extra: &str) -> World {
    World::amqp_at(&cluster.url_from(first, &format!("queue_type=quorum{extra}")))
}

/// Strict priority 300/300/300 with two pollers (as `amqp_e2e`'s test).
fn priority(cluster: &RabbitCluster, when: &str) {
    let first = (0..cluster.len())
        .find(|i| cluster.node(*i).accepts())
        .expect("a live node");
    let w = world(cluster, first, "&prefetch=4");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        w.queue_records(300, "low", "l", 0).await;
        w.queue_records(300, "medium", "m", 0).await;
        w.queue_records(300, "high", "h", 0).await;
    });
    let mut pollers = Pollers(
        (0..2)
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
            .collect(),
    );
    for (i, p) in pollers.0.iter_mut().enumerate() {
        let status = wait_child(p, Duration::from_secs(180), "poller");
        assert!(status.success(), "{}", w.log(&format!("p{i}.log")));
    }
    let rank = |q: &str| match q {
        "high" => 0,
        "medium" => 1,
        _ => 2,
    };
    let mut all: Vec<(String, String)> = Vec::new();
    for i in 0..2 {
        let log = w.log(&format!("p{i}.log"));
        let order = processing_order(&log);
        assert!(
            order.windows(2).all(|p| rank(&p[0]) <= rank(&p[1])),
            "{when}: poller {i} started out of priority order: {order:?}"
        );
        for l in log
            .lines()
            .filter(|l| l.contains(" Processing ") && !l.contains("queues:"))
        {
            let ts = l.split_whitespace().next().unwrap_or_default().to_string();
            all.push((ts, processing_order(l).pop().unwrap_or_default()));
        }
    }
    all.sort();
    let after = |later: &str, earlier: &str| {
        let first = all.iter().position(|(_, q)| q == earlier).expect("some");
        all[first..].iter().filter(|(_, q)| q == later).count()
    };
    let (late_highs, late_mediums) = (after("high", "medium"), after("medium", "low"));
    eprintln!(
        "priority {when}: {late_highs} high(s) after the first medium, {late_mediums} medium(s) after the first low"
    );
    assert!(
        late_highs <= 8 && late_mediums <= 8,
        "{when}: {late_highs} highs after a medium, {late_mediums} mediums after a low"
    );
    assert_eq!(ends_by_tag(&w.records()).len(), 900, "{when}: all ran");
}

/// What a producer task saw: tag -> when its `queue!` returned Ok.
type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// `n` record events on `medium` from 16 tasks, each `queue!` awaited
/// (confirmed); the Ok'd tags with their time go to `acked`, failures are
/// counted and retried under a new tag.
async fn produce(url: String, tag: &'static str, n: usize, acked: Acked) -> usize {
    produce_until(url, tag, n, acked, Arc::default(), Duration::ZERO).await
}

/// Like [`produce`], until `stop` is set (or `n` are Ok'd), each task
/// pausing `pace` between sends.
async fn produce_until(
    url: String,
    tag: &'static str,
    n: usize,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pace: Duration,
) -> usize {
    let client = Client::connect(&url).await.expect("connect");
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (client, acked, failed, next, stop) = (
            client.clone(),
            acked.clone(),
            failed.clone(),
            next.clone(),
            stop.clone(),
        );
        set.spawn(async move {
            let mut attempt = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n || stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                loop {
                    attempt += 1;
                    let t = format!("{tag}-{i}-{attempt}");
                    let req = QueueRequest::foreign("record")
                        .param("tag", &t)
                        .queue("medium");
                    match client.send(req).await {
                        Ok(_) => {
                            acked.lock().expect("lock").insert(t, now_ms());
                            break;
                        }
                        Err(e) => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            eprintln!("queue! failed (not counted as sent): {e}");
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("producer task");
    }
    failed.load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits until every Ok'd tag has an `end` record; returns (duplicates,
/// ends by tag).
fn all_ran(
    w: &World,
    acked: &Acked,
    limit: Duration,
    what: &str,
) -> (usize, HashMap<String, usize>) {
    let started = Instant::now();
    loop {
        let ends = ends_by_tag(&w.records());
        let acked = acked.lock().expect("lock").clone();
        let missing: Vec<&String> = acked.keys().filter(|t| !ends.contains_key(*t)).collect();
        if missing.is_empty() {
            let dups = acked
                .keys()
                .map(|t| ends.get(t).copied().unwrap_or(0).saturating_sub(1))
                .sum();
            return (dups, ends);
        }
        assert!(
            started.elapsed() < limit,
            "{what}: {} of {} Ok'd events never ran within {limit:?}, e.g. {:?}",
            missing.len(),
            acked.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn failover_under_load(cluster: &mut RabbitCluster) {
    const N: usize = 20_000;
    let w = world(cluster, 0, "&prefetch=64");
    let queue = format!(
        "{}medium",
        w.url
            .split("prefix=")
            .nth(1)
            .and_then(|p| p.split('&').next())
            .expect("prefix")
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Poller i lists node i first: the two start on different nodes.
    let mut pollers = Pollers(
        (0..2)
            .map(|i| {
                let log = std::fs::File::create(w.path().join(format!("p{i}.log"))).expect("log");
                let out = log.try_clone().expect("log");
                w.poller(&["--concurrency", "16", "--queues", "medium"])
                    .env("ACTION_EVENT_URL", on_node(cluster, &w, i))
                    .stdout(out)
                    .stderr(log)
                    .spawn()
                    .expect("spawn poller")
            })
            .collect(),
    );
    let pids: Vec<u32> = pollers.0.iter().map(|p| p.id()).collect();
    status_lists(&w, &on_node(cluster, &w, 2), &pids, "before the kill");
    // The node that leads the work queue (the pollers declared it), looked
    // up before the run: `rabbitmqctl` takes seconds on a busy machine.
    let t = Instant::now();
    let leader = loop {
        if let Some(l) = cluster.leader_of(&queue) {
            break l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no leader for {queue}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let acked: Acked = Arc::default();
    let producer = rt.spawn(produce(w.url.clone(), "load", N, acked.clone()));
    // At 30 %: kill -9 that node's VM.
    let t = Instant::now();
    while acked.lock().expect("lock").len() < N * 3 / 10 {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "30 % not reached in 300 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let before_ends = w.records().iter().filter(|r| r.what == "end").count();
    cluster.node_mut(leader).kill_vm();
    let killed_at = now_ms();
    eprintln!(
        "failover: killed node {leader} (leader of {queue}) at {} Ok'd, {before_ends} ran",
        acked.lock().expect("lock").len()
    );
    // The producer and both pollers go on within 10 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut producer_back, mut poller_back) = (None::<u64>, [None::<u64>; 2]);
    while (producer_back.is_none() || poller_back.iter().any(Option::is_none))
        && Instant::now() < deadline
    {
        if producer_back.is_none() {
            producer_back = acked
                .lock()
                .expect("lock")
                .values()
                .filter(|t| **t > killed_at)
                .min()
                .map(|t| t - killed_at);
        }
        let records = w.records();
        for (k, pid) in pids.iter().enumerate() {
            if poller_back[k].is_none() {
                poller_back[k] = records
                    .iter()
                    .filter(|r| r.pid == *pid && r.what == "start" && r.ms > killed_at)
                    .map(|r| r.ms - killed_at)
                    .min();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "failover: producer back after {producer_back:?} ms, pollers after {poller_back:?} ms"
    );
    let failed = rt.block_on(producer).expect("producer");
    let (dups, _) = all_ran(&w, &acked, Duration::from_secs(300), "failover");
    let ok = acked.lock().expect("lock").len();
    eprintln!(
        "failover: {ok} Ok'd, all ran, 0 lost, {dups} duplicate run(s), {failed} queue! call(s) returned an error"
    );
    assert_eq!(ok, N);
    for (what, back) in [
        ("producer", producer_back),
        ("poller 0", poller_back[0]),
        ("poller 1", poller_back[1]),
    ] {
        let back = back.unwrap_or_else(|| panic!("{what} never went on after the kill"));
        assert!(
            back <= 10_000,
            "{what} went on after {back} ms (limit 10 s)"
        );
    }
    let survivor = (0..3).find(|i| *i != leader).expect("a live node");
    status_lists(
        &w,
        &on_node(cluster, &w, survivor),
        &pids,
        "after the failover",
    );
    for p in &mut pollers.0 {
        assert!(alive(p), "a poller exited: {}", w.log("p0.log"));
        stop(p, "poller");
    }
    cluster.node_mut(leader).restart_vm();
    cluster.wait_running(3);
}

/// A poller on `w` (log `log`, args `args`) whose URL lists node `first` first.
pub(crate) fn spawn_on(
    cluster: &RabbitCluster,
    w: &World,
    first: usize,
    log: &str,
    args: &[&str],
) -> Child {
    let log = std::fs::File::create(w.path().join(log)).expect("log");
    let out = log.try_clone().expect("log");
    w.poller(args)
        .env("ACTION_EVENT_URL", on_node(cluster, w, first))
        .stdout(out)
        .stderr(log)
        .spawn()
        .expect("spawn poller")
}

/// The queue-name prefix of `w` (`test.<id>.`).
pub(crate) fn prefix_of(w: &World) -> String {
    w.url
        .split("prefix=")
        .nth(1)
        .and_then(|p| p.split('&').next())
        .expect("prefix")
        .to_string()
}

/// The node leading quorum queue `queue`, waited for (at most 60 s).
pub(crate) fn wait_leader(cluster: &RabbitCluster, queue: &str) -> usize {
    let t = Instant::now();
    loop {
        if let Some(l) = cluster.leader_of(queue) {
            return l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no leader for {queue} in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `w`'s URL (which lists the nodes from any one of them) with node
/// `first` listed first.
pub(crate) fn on_node(cluster: &RabbitCluster, w: &World, first: usize) -> String {
    let to = cluster.url_from(first, "");
    (0..cluster.len())
        .map(|i| cluster.url_from(i, ""))
        .find(|from| w.url.starts_with(from.as_str()))
        .map(|from| w.url.replacen(&from, &to, 1))
        .unwrap_or_else(|| panic!("{} lists the cluster's nodes", w.url))
}

/// `poller status` through `url` lists every poller in `pids` (within 30 s:
/// a poller whose node just died answers again once it reconnected).
fn status_lists(w: &World, url: &str, pids: &[u32], when: &str) {
    let started = Instant::now();
    loop {
        let out = w
            .poller(&["status", "--broker", url])
            .output()
            .expect("run poller status");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let table = stdout.split("Pollers on ").nth(1).unwrap_or("");
        let listed = |pid: &u32| {
            table
                .lines()
                .any(|l| l.split_whitespace().any(|t| t == pid.to_string()))
        };
        if pids.iter().all(listed) {
            eprintln!(
                "status {when}: both pollers listed after {:?}",
                started.elapsed()
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "status {when} does not list pollers {pids:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn delays_survive(cluster: &mut RabbitCluster) {
    let w = world(cluster, 0, "");
    let prefix = w
        .url
        .split("prefix=")
        .nth(1)
        .and_then(|p| p.split('&').next())
        .expect("prefix")
        .to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut pollers = Pollers(vec![
        w.spawn("p.log", &["--queues", "medium", "--retry-base", "8s"]),
    ]);
    let t0 = now_ms();
    rt.block_on(async {
        let c = w.client().await;
        c.send(
            QueueRequest::foreign("record")
                .param("tag", "delayed")
                .queue("medium")
                .delay(Duration::from_secs(8)),
        )
        .await
        .expect("queue the delayed event");
        c.send(
            QueueRequest::foreign("flaky")
                .param("tag", "retrying")
                .param("fail_times", 1)
                .queue("medium"),
        )
        .await
        .expect("queue the retrying event");
    });
    // The retrying event failed once and waits in the delay ladder.
    w.wait_records(Duration::from_secs(30), "the first failure", |r| {
        r.iter().any(|r| r.tag == "retrying" && r.what == "fail")
    });
    let failed_at = w
        .records()
        .iter()
        .find(|r| r.tag == "retrying" && r.what == "fail")
        .map(|r| r.ms)
        .expect("fail record");
    // Kill the node leading the delay queues holding them (quorum queues
    // count their messages only every few seconds: the levels declared
    // are the ones in use).
    let delay_queues = cluster.leaders(&format!("{prefix}delay."));
    assert!(
        !delay_queues.is_empty(),
        "the two events wait in the delay ladder"
    );
    let leader = delay_queues[0].1.expect("a leader");
    assert!(
        delay_queues.iter().all(|(_, l)| *l == Some(leader)),
        "one node leads every delay queue in use: {delay_queues:?}"
    );
    cluster.node_mut(leader).kill_vm();
    eprintln!("delays: killed node {leader}, leader of {delay_queues:?}");
    let records = w.wait_records(Duration::from_secs(60), "both to run", |r| {
        ["delayed", "retrying"]
            .iter()
            .all(|t| r.iter().any(|r| r.tag == *t && r.what == "end"))
    });
    let end = |t: &str| {
        records
            .iter()
            .find(|r| r.tag == t && r.what == "end")
            .map(|r| r.ms)
            .expect("end")
    };
    let (d, r) = (end("delayed") - t0, end("retrying") - failed_at);
    eprintln!(
        "delays: the 8 s delayed event ran after {d} ms, the retry (8 s backoff ± jitter) {r} ms after its failure"
    );
    assert!((8_000..30_000).contains(&d), "delayed ran after {d} ms");
    assert!(
        (4_000..30_000).contains(&r),
        "retry ran {r} ms after its failure"
    );
    stop(&mut pollers.0[0], "poller");
    cluster.node_mut(leader).restart_vm();
    cluster.wait_running(3);
}

fn rolling_restart(cluster: &mut RabbitCluster) {
    let w = world(cluster, 0, "&prefetch=64");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut pollers = Pollers(
        (0..2)
            .map(|i| {
                w.spawn(
                    &format!("p{i}.log"),
                    &["--concurrency", "16", "--queues", "medium"],
                )
            })
            .collect(),
    );
    let acked: Acked = Arc::default();
    let halt = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 16 tasks, one send each per 100 ms at most: events go in (and out)
    // during every restart, not only before the first.
    let producer = rt.spawn(produce_until(
        w.url.clone(),
        "roll",
        usize::MAX,
        acked.clone(),
        halt.clone(),
        Duration::from_millis(100),
    ));
    let ok_now = || acked.lock().expect("lock").len();
    let mut during = Vec::new();
    for i in 0..cluster.len() {
        // Each node goes once 300 more events went through since the last.
        let seen = ok_now();
        let t = Instant::now();
        while ok_now() < seen + 300 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "rolling restart: no progress before node {i}'s restart"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (s, before) = (Instant::now(), ok_now());
        cluster.node_mut(i).stop_vm();
        cluster.node_mut(i).restart_vm();
        cluster.wait_running(3);
        let went_in = ok_now() - before;
        during.push(went_in);
        eprintln!(
            "rolling restart: node {i} stopped and restarted in {:?}; {went_in} events Ok'd meanwhile",
            s.elapsed()
        );
    }
    halt.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = rt.block_on(producer).expect("producer");
    let (dups, _) = all_ran(&w, &acked, Duration::from_secs(300), "rolling restart");
    eprintln!(
        "rolling restart: {} Ok'd, all ran, 0 lost, {dups} duplicate run(s), {failed} queue! error(s)",
        acked.lock().expect("lock").len()
    );
    assert!(
        during.iter().all(|n| *n > 0),
        "events went in while each node restarted: {during:?}"
    );
    for p in &mut pollers.0 {
        assert!(alive(p), "a poller exited");
        stop(p, "poller");
    }
}
