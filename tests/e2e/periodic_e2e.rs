//! End to end: periodic events with no master. Three real poller processes
//! (tests/support/periodic_poller.rs, events `every_second` with the
//! default missed-tick policy and `every_second_skip` with `missed =
//! "skip"`, both `every = "1s"` on queue `ticks`) on SQLite, on PostgreSQL
//! and on RabbitMQ. The pollers serve only `idle`, so every tick they queue stays
//! in `ticks` to be counted by its deterministic id (and this shows that a
//! poller queues the ticks of queues it does not serve).
//!
//! Each case is its own test, so the long ones (60 s each) run at the same
//! time. Every case checks that the ticks queued form an unbroken run of
//! seconds (nothing lost), and counts duplicates: the same id queued twice
//! (RabbitMQ: two messages; SQLite, PostgreSQL: two `Queued periodic`
//! log lines, since
//! the table keeps one row per id). No backend may have any: SQLite and
//! PostgreSQL queue each tick in one transaction, RabbitMQ in one AMQP transaction
//! on the lease channel (the event, the new state message and the ack of
//! the old one, committed together: a holder killed before the commit
//! leaves nothing). The counts are printed.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use action_event::Envelope;
use action_event::periodic::tick_of;

use crate::common::*;

const PERIODIC_POLLER: &str = env!("CARGO_BIN_EXE_e2e_periodic_poller");
const ONCE: &str = "every_second";
const SKIP: &str = "every_second_skip";

/// Three pollers (slots) of one world; a slot's poller can be killed and
/// replaced; every poller's log is kept (`p<slot>.<generation>.log`).
struct Fleet {
    w: World,
    slots: Vec<(Child, String)>,
    logs: Vec<String>,
}

impl Fleet {
    fn start(backend: &Backend) -> Fleet {
        let mut f = Fleet {
            w: World::new(backend),
            slots: Vec::new(),
            logs: Vec::new(),
        };
        // 4 cases x 3 pollers at once on the shared server: two pooled
        // connections each (plus LISTEN and the owner lock) are plenty for
        // pollers that only queue ticks, and stay far below its 100.
        f.w.url = f.w.url.replace("&pool=4", "&pool=2");
        for _ in 0..3 {
            let p = f.spawn();
            f.slots.push(p);
        }
        f
    }

    fn spawn(&mut self) -> (Child, String) {
        let name = format!("p{}.log", self.logs.len());
        let log = std::fs::File::create(self.w.path().join(&name)).expect("log file");
        let child = Command::new(PERIODIC_POLLER)
            .args(["--queues", "idle"])
            .current_dir(self.w.path())
            .env("ACTION_EVENT_URL", &self.w.url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn the periodic poller");
        self.logs.push(name.clone());
        (child, name)
    }

    /// SIGKILLs the poller of `slot` and starts another in its place.
    fn kill_and_replace(&mut self, slot: usize) {
        let (mut child, _) = {
            let fresh = self.spawn();
            std::mem::replace(&mut self.slots[slot], fresh)
        };
        send_signal(&child, SIGKILL);
        let _ = child.wait();
    }

    /// SIGTERMs every poller and waits for them.
    fn stop_all(&mut self) {
        for (child, name) in &mut self.slots {
            if alive(child) {
                send_signal(child, SIGTERM);
            }
            let status = wait_child(child, Duration::from_secs(30), name);
            assert!(status.success(), "{name} exited with {status}");
        }
    }

    fn start_all(&mut self) {
        for slot in 0..self.slots.len() {
            self.slots[slot] = self.spawn();
        }
    }

    /// The slot whose poller queues the ticks now: on RabbitMQ the live one
    /// that logged taking the lease; on SQLite and PostgreSQL (no holder:
    /// every poller races for each tick) the one that queued the latest tick.
    fn holder(&self) -> Option<usize> {
        match self.w.backend {
            Backend::Amqp => self.slots.iter().position(|(_, log)| {
                self.w
                    .log(log)
                    .contains("now queues the periodic ticks (it holds the lease)")
            }),
            Backend::Sqlite | Backend::Postgres => self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, (_, log))| {
                    let text = self.w.log(log);
                    let last = text
                        .lines()
                        .rev()
                        .find(|l| l.contains(&format!("Queued periodic {ONCE}:")))?
                        .to_string();
                    Some((last, i))
                })
                .max()
                .map(|(_, i)| i),
        }
    }

    /// The ids queued per event, from the backend, and how many times each
    /// id was logged as queued.
    fn collect(&self) -> Collected {
        let queued = match self.w.backend {
            Backend::Sqlite => sqlite_ticks(&self.w),
            Backend::Amqp => amqp_ticks(&self.w),
            Backend::Postgres => postgres_ticks(&self.w),
        };
        let mut logged: BTreeMap<(String, String), usize> = BTreeMap::new();
        for log in &self.logs {
            for line in self.w.log(log).lines() {
                if let Some(rest) = line.split("Queued periodic ").nth(1)
                    && let Some((name, rest)) = rest.split_once(':')
                    && let Some(id) = rest.split_whitespace().next()
                {
                    *logged
                        .entry((name.to_string(), id.to_string()))
                        .or_default() += 1;
                }
            }
        }
        Collected { queued, logged }
    }

    fn all_logs(&self) -> String {
        self.logs
            .iter()
            .map(|l| self.w.log(l))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (child, _) in &mut self.slots {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Backend::Amqp = self.w.backend {
            delete_queues(&self.w);
        }
    }
}

struct Collected {
    /// Event name → the envelopes' ids, one per queued event.
    queued: BTreeMap<String, Vec<action_event::EventId>>,
    /// (event name, id) → `Queued periodic` lines across every log.
    logged: BTreeMap<(String, String), usize>,
}

impl Collected {
    /// The tick times of `event`, sorted, with duplicates kept.
    fn ticks(&self, event: &str) -> Vec<i64> {
        let mut t: Vec<i64> = self
            .queued
            .get(event)
            .map(|ids| {
                ids.iter()
                    .map(|id| tick_of(id).expect("a periodic id"))
                    .collect()
            })
            .unwrap_or_default();
        t.sort();
        t
    }

    /// Ticks of `event` queued more than once: extra messages with one id
    /// (RabbitMQ) plus extra `Queued periodic` lines for one id (both
    /// backends; SQLite's table cannot hold two rows with one id).
    fn duplicates(&self, event: &str) -> usize {
        let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
        for id in self.queued.get(event).into_iter().flatten() {
            *per_id.entry(id.to_string()).or_default() += 1;
        }
        let in_queue: usize = per_id.values().map(|n| n - 1).sum();
        let in_logs: usize = self
            .logged
            .iter()
            .filter(|((name, _), _)| name == event)
            .map(|(_, n)| n - 1)
            .sum();
        in_queue.max(in_logs)
    }
}

fn sqlite_ticks(w: &World) -> BTreeMap<String, Vec<action_event::EventId>> {
    let conn = rusqlite::Connection::open(w.path().join("events.db")).expect("open");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    let mut stmt = conn
        .prepare("SELECT name, event_id FROM events WHERE queue = 'ticks'")
        .expect("select");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("query");
    let mut m: BTreeMap<String, Vec<action_event::EventId>> = BTreeMap::new();
    for row in rows {
        let (name, id) = row.expect("row");
        m.entry(name)
            .or_default()
            .push(id.parse().expect("an event id"));
    }
    m
}

fn postgres_ticks(w: &World) -> BTreeMap<String, Vec<action_event::EventId>> {
    let schema = w.schema().expect("a schema");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = <action_event::sqlx::PgConnection as action_event::sqlx::Connection>::connect(
            POSTGRES_URL,
        )
        .await
        .expect("connect to PostgreSQL");
        let rows: Vec<(String, String)> = action_event::sqlx::query_as(&format!(
            "SELECT name, event_id FROM {schema}.events WHERE queue = 'ticks'"
        ))
        .fetch_all(&mut c)
        .await
        .expect("select");
        let mut m: BTreeMap<String, Vec<action_event::EventId>> = BTreeMap::new();
        for (name, id) in rows {
            m.entry(name)
                .or_default()
                .push(id.parse().expect("an event id"));
        }
        m
    })
}

fn prefix(w: &World) -> String {
    w.url
        .split("prefix=")
        .nth(1)
        .and_then(|p| p.split('&').next())
        .expect("the test URL has a prefix")
        .to_string()
}

fn amqp_ticks(w: &World) -> BTreeMap<String, Vec<action_event::EventId>> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conn = lapin::Connection::connect(w.base_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        let queue = format!("{}ticks", prefix(w));
        let mut m: BTreeMap<String, Vec<action_event::EventId>> = BTreeMap::new();
        while let Some(msg) = ch
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let env = Envelope::from_slice(&msg.delivery.data).expect("an envelope");
            m.entry(env.name).or_default().push(env.id);
        }
        let _ = conn.close(200, "done".into()).await;
        m
    })
}

/// Deletes the queues this test's pollers declared (its own prefix only).
fn delete_queues(w: &World) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let Ok(conn) =
            lapin::Connection::connect(w.base_url(), lapin::ConnectionProperties::default()).await
        else {
            return;
        };
        let p = prefix(w);
        for q in ["ticks", "idle", "periodic.lease", "periodic.state", "dead"] {
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch
                    .queue_delete(
                        format!("{p}{q}").as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = conn.close(200, "done".into()).await;
    });
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Sleeps until `offset_ms` past the next whole second.
fn sleep_to_boundary(offset_ms: i64) {
    let now = now_ms();
    let target = (now / 1000 + 1) * 1000 + offset_ms;
    std::thread::sleep(Duration::from_millis((target - now) as u64));
}

/// The ticks form an unbroken run of seconds of at least `min` ticks;
/// returns the number of duplicates.
fn assert_unbroken(c: &Collected, event: &str, min: usize, logs: &str) -> usize {
    let ticks = c.ticks(event);
    let mut unique = ticks.clone();
    unique.dedup();
    assert!(
        unique.len() >= min,
        "{event}: {} ticks queued, expected at least {min}\n{logs}",
        unique.len()
    );
    let gaps: Vec<(i64, i64)> = unique
        .windows(2)
        .filter(|w| w[1] - w[0] != 1000)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        gaps.is_empty(),
        "{event}: ticks lost between {gaps:?} (in ms)\n{logs}"
    );
    c.duplicates(event)
}

/// 3 pollers, `every = "1s"` for 60 s.
fn steady(backend: Backend) {
    let mut f = Fleet::start(&backend);
    std::thread::sleep(Duration::from_secs(60));
    f.stop_all();
    let c = f.collect();
    let logs = f.all_logs();
    for event in [ONCE, SKIP] {
        let dups = assert_unbroken(&c, event, 55, &logs);
        println!(
            "{backend:?} steady {event}: {} ticks, {dups} duplicates",
            c.ticks(event).len()
        );
        assert_eq!(dups, 0, "{event}: duplicates with no poller killed\n{logs}");
    }
    // `poller status` shows each periodic event with its last tick (read
    // from the broker, every poller stopped) and its next one.
    let out = Command::new(PERIODIC_POLLER)
        .arg("status")
        .current_dir(f.w.path())
        .env("ACTION_EVENT_URL", &f.w.url)
        .output()
        .expect("run status");
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status failed: {status}");
    let last = c.ticks(ONCE).last().copied().expect("ticks");
    let row = status
        .lines()
        .find(|l| l.starts_with(&format!("{ONCE} ")))
        .unwrap_or_else(|| panic!("no {ONCE} row:\n{status}"));
    assert!(
        row.contains("every 1s") && row.contains(&action_event::periodic::format_tick(last)),
        "{row}\n(last tick queued: {})",
        action_event::periodic::format_tick(last)
    );
    let digest = status
        .lines()
        .find(|l| l.starts_with("morning_digest "))
        .unwrap_or_else(|| panic!("no morning_digest row:\n{status}"));
    assert!(
        digest.contains("cron 0 30 9 * * Mon-Fri (Europe/Berlin)") && digest.contains("never"),
        "{digest}"
    );
    // The dashboard's Scheduled page shows the same.
    let page = dashboard_page(&f, "/scheduled");
    let row = page
        .split("<tr data-event=\"")
        .find(|r| r.starts_with(&format!("{ONCE}\"")))
        .unwrap_or_else(|| panic!("no {ONCE} row on the dashboard:\n{page}"));
    assert!(
        row.contains("every 1s") && row.contains(&action_event::periodic::format_tick(last)),
        "{row}"
    );
}

/// GET `path` from `poller web` on this fleet's broker (a child process on
/// a free port, stopped after).
fn dashboard_page(f: &Fleet, path: &str) -> String {
    use std::io::{Read, Write};
    let port = action_event_test_support::rabbit_node::free_port();
    let mut child = Command::new(PERIODIC_POLLER)
        .args(["web", "--bind", &format!("127.0.0.1:{port}")])
        .current_dir(f.w.path())
        .env("ACTION_EVENT_URL", &f.w.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start poller web");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let page = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break out;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard did not serve {path}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    page
}

/// 3 pollers for 60 s, one SIGKILLed every 10 s and replaced.
fn kill_every_10s(backend: Backend) {
    let mut f = Fleet::start(&backend);
    for i in 0..6 {
        std::thread::sleep(Duration::from_secs(10));
        f.kill_and_replace(i % 3);
    }
    std::thread::sleep(Duration::from_secs(2));
    f.stop_all();
    let c = f.collect();
    let logs = f.all_logs();
    for event in [ONCE, SKIP] {
        let dups = assert_unbroken(&c, event, 55, &logs);
        println!(
            "{backend:?} kill every 10 s {event}: {} ticks, {dups} duplicates",
            c.ticks(event).len()
        );
        assert_eq!(dups, 0, "{event}: {backend:?} queued a tick twice\n{logs}");
    }
}

/// The poller that queues the ticks SIGKILLed right at a tick boundary (0
/// to 12 ms after it, where its claim runs), 20 times, replaced each time.
fn holder_killed_at_boundaries(backend: Backend) {
    let mut f = Fleet::start(&backend);
    for i in 0..20 {
        let found = Instant::now();
        let slot = loop {
            if let Some(s) = f.holder() {
                break s;
            }
            assert!(
                found.elapsed() < Duration::from_secs(20),
                "no poller took over the ticks\n{}",
                f.all_logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        sleep_to_boundary((i % 5) * 3);
        f.kill_and_replace(slot);
        // The next holder takes over and queues a tick or two.
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(2));
    f.stop_all();
    let c = f.collect();
    let logs = f.all_logs();
    for event in [ONCE, SKIP] {
        let dups = assert_unbroken(&c, event, 40, &logs);
        println!(
            "DUPLICATES {backend:?} holder killed at 20 tick boundaries, {event}: {dups} ({} ticks)",
            c.ticks(event).len()
        );
        assert_eq!(
            dups, 0,
            "{event}: {backend:?} queued a tick twice ({dups} duplicates for 20 kills)\n{logs}"
        );
    }
}

/// All pollers stopped for 10 s, then started: `every_second` queues one
/// event for the ticks more than 5 s late (`missed = "once"`), then resumes;
/// `every_second_skip` queues none of them; both queue the late ones.
fn stopped_10s(backend: Backend) {
    let mut f = Fleet::start(&backend);
    std::thread::sleep(Duration::from_secs(8));
    f.stop_all();
    std::thread::sleep(Duration::from_secs(10));
    f.start_all();
    std::thread::sleep(Duration::from_secs(8));
    f.stop_all();
    let c = f.collect();
    let logs = f.all_logs();
    for event in [ONCE, SKIP] {
        let ticks = c.ticks(event);
        let mut unique = ticks.clone();
        unique.dedup();
        assert_eq!(unique.len(), ticks.len(), "{event}: duplicates\n{logs}");
        let gaps: Vec<(i64, i64)> = unique
            .windows(2)
            .filter(|w| w[1] - w[0] != 1000)
            .map(|w| (w[0], w[1]))
            .collect();
        assert_eq!(
            gaps.len(),
            1,
            "{event}: one gap expected, got {gaps:?}\n{logs}"
        );
        let (before, after) = gaps[0];
        let missed = (after - before) / 1000 - 1;
        assert!(missed >= 3, "{event}: only {missed} ticks missing\n{logs}");
        let line = logs
            .lines()
            .find(|l| l.contains(&format!("Periodic event {event}: ticks from")))
            .unwrap_or_else(|| panic!("{event}: no missed-ticks line\n{logs}"));
        let from = action_event::periodic::format_tick(before + 1000);
        assert!(
            line.contains(&from),
            "{event}: {line} (expected from {from})"
        );
        if event == ONCE {
            // The first tick after the gap is the one event for all the
            // missed ticks, then the schedule resumes second by second.
            let once_for = action_event::periodic::format_tick(after);
            assert!(
                line.contains(&format!("queued once for {once_for}")),
                "{line} (expected once for {once_for})"
            );
        } else {
            // Nothing for the missed ticks: the last one skipped is the
            // second before the first queued.
            let to = action_event::periodic::format_tick(after - 1000);
            assert!(
                line.contains(&format!("to {to} were missed")) && line.contains("skipped"),
                "{line} (expected skipped to {to})"
            );
        }
        println!(
            "{backend:?} stopped 10 s {event}: gap {before}..{after}, {missed} ticks not queued one by one"
        );
    }
}

/// The cases, all started together by the first of their tests to run
/// (the test harness runs only as many tests at once as there are cores,
/// and these mostly wait): each test then waits for its own case.
const CASES: [(&str, fn()); 12] = [
    ("sqlite steady", || steady(Backend::Sqlite)),
    ("amqp steady", || steady(Backend::Amqp)),
    ("sqlite kill", || kill_every_10s(Backend::Sqlite)),
    ("amqp kill", || kill_every_10s(Backend::Amqp)),
    ("sqlite holder", || {
        holder_killed_at_boundaries(Backend::Sqlite)
    }),
    ("amqp holder", || holder_killed_at_boundaries(Backend::Amqp)),
    ("sqlite stopped", || stopped_10s(Backend::Sqlite)),
    ("amqp stopped", || stopped_10s(Backend::Amqp)),
    ("postgres steady", || steady(Backend::Postgres)),
    ("postgres kill", || kill_every_10s(Backend::Postgres)),
    ("postgres holder", || {
        holder_killed_at_boundaries(Backend::Postgres)
    }),
    ("postgres stopped", || stopped_10s(Backend::Postgres)),
];

type Running = std::sync::Mutex<BTreeMap<&'static str, std::thread::JoinHandle<()>>>;

fn run_case(name: &'static str) {
    static RUNNING: std::sync::OnceLock<Running> = std::sync::OnceLock::new();
    let running = RUNNING.get_or_init(|| {
        let amqp = amqp_available();
        let postgres = postgres_available();
        let mut m = BTreeMap::new();
        for (case, body) in CASES {
            if (case.starts_with("amqp") && !amqp) || (case.starts_with("postgres") && !postgres) {
                continue;
            }
            let handle = std::thread::Builder::new()
                .name(case.to_string())
                .spawn(body)
                .expect("spawn a case");
            m.insert(case, handle);
        }
        std::sync::Mutex::new(m)
    });
    let handle = running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
    match handle {
        Some(h) => {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        // Only the RabbitMQ and PostgreSQL cases are left out, when their
        // server does not answer (amqp_available/postgres_available said
        // so, loudly, or failed under ACTION_EVENT_REQUIRE_AMQP/_POSTGRES=1).
        None => assert!(
            name.starts_with("amqp") || name.starts_with("postgres"),
            "case {name} was not started"
        ),
    }
}

#[test]
fn sqlite_3_pollers_60s_each_tick_once() {
    run_case("sqlite steady");
}

#[test]
fn amqp_3_pollers_60s_each_tick_once() {
    run_case("amqp steady");
}

#[test]
fn sqlite_one_poller_killed_every_10s_no_tick_lost() {
    run_case("sqlite kill");
}

#[test]
fn amqp_one_poller_killed_every_10s_no_tick_lost() {
    run_case("amqp kill");
}

#[test]
fn sqlite_holder_killed_at_20_tick_boundaries_no_tick_lost() {
    run_case("sqlite holder");
}

#[test]
fn amqp_holder_killed_at_20_tick_boundaries_no_tick_lost() {
    run_case("amqp holder");
}

#[test]
fn sqlite_all_stopped_10s_missed_policy_applied() {
    run_case("sqlite stopped");
}

#[test]
fn amqp_all_stopped_10s_missed_policy_applied() {
    run_case("amqp stopped");
}

#[test]
fn postgres_3_pollers_60s_each_tick_once() {
    run_case("postgres steady");
}

#[test]
fn postgres_one_poller_killed_every_10s_no_tick_lost() {
    run_case("postgres kill");
}

#[test]
fn postgres_holder_killed_at_20_tick_boundaries_no_tick_lost() {
    run_case("postgres holder");
}

#[test]
fn postgres_all_stopped_10s_missed_policy_applied() {
    run_case("postgres stopped");
}
