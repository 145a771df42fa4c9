//! Who holds a SQLite claim: events held by a process that died come back
//! at once, not after their lease; a live owner, a reused pid and an owner
//! that cannot be checked keep theirs. The owner is a real process: this
//! test binary run again as `holder` (an ignored test), SIGKILLed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use action_event::Envelope;
use action_event::broker::sqlite::{SCHEMA_VERSION, SqliteBroker};
use action_event::broker::{Broker, Delivery};
use serde_json::json;

const HOLDER_URL: &str = "SQLITE_OWNER_HOLDER_URL";
const HOLDER_COUNT: &str = "SQLITE_OWNER_HOLDER_COUNT";

fn qs() -> Vec<String> {
    vec!["medium".to_string()]
}

fn url(dir: &tempfile::TempDir, opts: &str) -> String {
    format!("sqlite://{}{opts}", dir.path().join("events.db").display())
}

async fn publish(b: &SqliteBroker, n: usize) {
    for i in 0..n {
        b.publish(&Envelope::new("e", "medium", json!({ "i": i })))
            .await
            .expect("publish");
    }
}

/// Not a test: the process that holds events, started by [`holder`]. Takes
/// `HOLDER_COUNT` events (one batch claim hands them out), says `HELD`, and
/// sleeps until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the other tests as a child process"]
async fn holder_process() {
    let url = std::env::var(HOLDER_URL).expect("run by the other tests");
    let n: usize = std::env::var(HOLDER_COUNT)
        .expect("count")
        .parse()
        .expect("count");
    let b = SqliteBroker::open(&url).await.expect("open");
    let mut held = Vec::new();
    while held.len() < n {
        match b.take(&qs(), Duration::from_secs(5)).await.expect("take") {
            Some(d) => held.push(d),
            None => panic!("holder: only {} of {n} events to take", held.len()),
        }
    }
    println!("HELD {}", held.len());
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(held);
}

/// Starts a process that takes `n` events of `medium` on `url` and holds
/// them; returns once it holds them.
fn holder(url: &str, n: usize) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sqlite_owner::holder_process",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLDER_URL, url)
        .env(HOLDER_COUNT, n.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the holder");
    let out = child.stdout.take().expect("stdout");
    for line in BufReader::new(out).lines() {
        let line = line.expect("holder output");
        if line.starts_with("HELD") {
            return child;
        }
    }
    let status = child.wait().expect("wait");
    panic!("the holder exited ({status}) before it held {n} events");
}

fn sigkill(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill");
}

/// Takes until `n` deliveries came (or `limit` passed).
async fn take_n(b: &SqliteBroker, n: usize, limit: Duration) -> Vec<Delivery> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && start.elapsed() < limit {
        if let Some(d) = b
            .take(&qs(), Duration::from_millis(50))
            .await
            .expect("take")
        {
            got.push(d);
        }
    }
    got
}

/// This process's start time, field 22 of `/proc/self/stat`.
fn my_start_time() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect(")") + 1..];
    after
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("a number")
}

fn db(dir: &tempfile::TempDir) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.path().join("events.db")).expect("open");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_events_come_back_within_a_second_on_a_taking_broker() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(&dir, "?lease=30s");
    let survivor = SqliteBroker::open(&u).await.unwrap();
    // A poller: it has looked for events (nothing there yet).
    assert!(
        survivor
            .take(&qs(), Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    publish(&survivor, 8).await;
    let mut child = holder(&u, 8);
    // A live owner keeps its events: two owner checks later, still held.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(survivor.depth("medium").await.unwrap().waiting, 0);
    assert!(
        survivor
            .take(&qs(), Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );

    sigkill(&child);
    // Not reaped yet: a zombie is gone too.
    let killed = Instant::now();
    let got = take_n(&survivor, 8, Duration::from_secs(5)).await;
    let took = killed.elapsed();
    eprintln!(
        "all 8 events of the killed owner taken {:?} after the kill (lease 30 s)",
        took
    );
    assert_eq!(got.len(), 8, "every held event comes back");
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}, not within 1 s"
    );
    assert!(got.iter().all(|d| d.redelivered), "handed out before");
    for d in &got {
        survivor.ack(d).await.unwrap();
    }
    child.wait().unwrap();
    // The gone owner's row is deleted; only the survivor's remains.
    let owners: i64 = db(&dir)
        .query_row("SELECT COUNT(*) FROM owners", [], |r| r.get(0))
        .unwrap();
    assert_eq!(owners, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_opened_after_the_owner_died_gets_its_events_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(&dir, "?lease=30s");
    publish(&SqliteBroker::open(&u).await.unwrap(), 8).await;
    let mut child = holder(&u, 8);
    sigkill(&child);
    child.wait().unwrap();
    let killed = Instant::now();
    let next = SqliteBroker::open(&u).await.unwrap();
    let got = take_n(&next, 8, Duration::from_secs(5)).await;
    let took = killed.elapsed();
    eprintln!("a broker opened after the kill had all 8 events in {took:?}");
    assert_eq!(got.len(), 8);
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// What `--exit-when-empty` asks: a broker that never took (so its
/// heartbeat does not look at owners) counts a dead owner's events as
/// waiting, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_counts_a_dead_owners_events_as_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(&dir, "?lease=30s");
    let counter = SqliteBroker::open(&u).await.unwrap();
    publish(&counter, 8).await;
    let mut child = holder(&u, 8);
    assert_eq!(counter.depth("medium").await.unwrap().waiting, 0);
    sigkill(&child);
    child.wait().unwrap();
    let d = counter.depth("medium").await.unwrap();
    assert_eq!(d.waiting, 8, "{d:?}");
    assert_eq!(d.scheduled, Some(0));
}

/// The pid-reuse guard: an owner row whose pid now belongs to another
/// process (here: this test process, with a start time that is not its
/// own) is gone; the same pid with the right start time is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_does_not_keep_the_events_of_the_process_that_had_it() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(&dir, "?lease=30s");
    let counter = SqliteBroker::open(&u).await.unwrap();
    publish(&counter, 8).await;
    let mut child = holder(&u, 8);
    let me = i64::from(std::process::id());
    let set = |started: i64| {
        let n = db(&dir)
            .execute(
                "UPDATE owners SET pid = ?1, started = ?2",
                rusqlite::params![me, started],
            )
            .unwrap();
        assert_eq!(n, 1, "one owner: the holder");
    };
    // The owner row now names this live process, start time and all.
    set(my_start_time());
    assert_eq!(counter.depth("medium").await.unwrap().waiting, 0);
    // The same pid, another start time: a process that reused the pid.
    set(my_start_time() + 1);
    assert_eq!(counter.depth("medium").await.unwrap().waiting, 8);
    sigkill(&child);
    child.wait().unwrap();
}

/// An owner that cannot be checked (another PID namespace: a container
/// sharing the file) keeps its events until their lease lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_cannot_be_checked_keeps_its_events_until_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(&dir, "?lease=2s");
    let counter = SqliteBroker::open(&u).await.unwrap();
    publish(&counter, 3).await;
    let mut child = holder(&u, 3);
    db(&dir)
        .execute("UPDATE owners SET pid_ns = 'pid:[1]'", [])
        .unwrap();
    sigkill(&child);
    child.wait().unwrap();
    let killed = Instant::now();
    assert_eq!(counter.depth("medium").await.unwrap().waiting, 0);
    let got = take_n(&counter, 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    assert!(
        killed.elapsed() > Duration::from_millis(1000),
        "came back after {:?}: before the lease lapsed",
        killed.elapsed()
    );
}

/// A file of schema version 1 is migrated on open; its rows, which have no
/// owner, keep working: a ready one is taken, a claimed one comes back when
/// its lease lapses (never through an owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_file_is_migrated_and_its_rows_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let now = action_event::envelope::now_ms() as i64;
    {
        let c = db(&dir);
        c.execute_batch(
            "CREATE TABLE events (
                id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,
                name TEXT, body TEXT NOT NULL, visible_at INTEGER NOT NULL, claim TEXT,
                deliveries INTEGER NOT NULL DEFAULT 0, queued_at INTEGER NOT NULL);
             CREATE INDEX events_ready ON events (queue, visible_at, id);
             CREATE TABLE dead_events (id INTEGER PRIMARY KEY, event_id TEXT, name TEXT,
                queue TEXT, body TEXT, attempts INTEGER, errors TEXT, reason TEXT, died_at INTEGER);
             CREATE INDEX dead_events_event_id ON dead_events (event_id);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        for (i, (claim, visible_at)) in [(None, now - 10), (Some("0123abcd"), now + 1500)]
            .into_iter()
            .enumerate()
        {
            let env = Envelope::new("e", "medium", json!({ "i": i }));
            c.execute(
                "INSERT INTO events (event_id, queue, name, body, visible_at, claim, deliveries, queued_at) \
                 VALUES (?1, 'medium', 'e', ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    env.id.to_string(),
                    String::from_utf8(env.to_bytes()).unwrap(),
                    visible_at,
                    claim,
                    i64::from(claim.is_some()),
                    now - 10
                ],
            )
            .unwrap();
        }
    }
    let b = SqliteBroker::open(&url(&dir, "")).await.unwrap();
    let (version, owners): (i64, i64) = {
        let c = db(&dir);
        (
            c.pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap(),
            c.query_row("SELECT COUNT(*) FROM events WHERE owner IS NULL", [], |r| {
                r.get(0)
            })
            .unwrap(),
        )
    };
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(owners, 2, "old rows have no owner");
    let first = b
        .take(&qs(), Duration::ZERO)
        .await
        .unwrap()
        .expect("ready row");
    assert!(!first.redelivered);
    b.ack(&first).await.unwrap();
    assert_eq!(b.depth("medium").await.unwrap().waiting, 0, "still leased");
    let second = take_n(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(second.len(), 1, "its lease lapsed");
    assert!(second[0].redelivered);
    b.ack(&second[0]).await.unwrap();
}

/// A URL whose directory does not exist is an error that names the
/// directory and the fix; nothing is created.
#[tokio::test]
async fn a_missing_directory_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent/dir");
    let u = format!("sqlite://{}/x.db", missing.display());
    let err = SqliteBroker::open(&u).await.expect_err("missing directory");
    assert!(matches!(err, action_event::Error::BadUrl { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("create it"), "{msg}");
    assert!(
        msg.contains(&format!("mkdir -p {}", missing.display())),
        "{msg}"
    );
    assert!(!dir.path().join("nonexistent").exists(), "nothing created");
}
