//! End to end, SQLite only: a poller SIGKILLed with events claimed gives
//! them back at once through its owner record (not after the 30 s lease),
//! `--exit-when-empty` waits for them, and the file's path is logged and
//! checked. Real poller processes (tests/support/e2e_poller.rs), real signals.

use std::time::Duration;

use crate::common::*;

const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// A SQLite world whose lease is the default 30 s: anything back sooner
/// came back through its owner.
fn world() -> World {
    let mut w = World::new(&Backend::Sqlite);
    w.url = format!(
        "sqlite://{}?lease=30s",
        w.path().join("events.db").display()
    );
    w
}

/// Events of the file claimed now, by an owner (leased, not ready).
fn claimed(w: &World) -> i64 {
    let conn = rusqlite::Connection::open(w.path().join("events.db")).expect("open");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy");
    conn.query_row(
        "SELECT COUNT(*) FROM events WHERE claim IS NOT NULL AND owner IS NOT NULL AND visible_at > ?1",
        [action_event::envelope::now_ms() as i64],
        |r| r.get(0),
    )
    .expect("count")
}

fn assert_exactly_once(records: &[Record], n: usize, tag: &str) {
    let ends = ends_by_tag(records);
    for i in 0..n {
        let t = format!("{tag}-{i}");
        assert_eq!(ends.get(&t).copied().unwrap_or(0), 1, "{t} must end once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_poller_holding_8_claimed_events_another_runs_them_within_2s() {
    let w = world();
    // The survivor is up first, then stopped, so the other one claims.
    let mut q = w.spawn("q.log", &["--queues", "medium", "--concurrency", "8"]);
    wait_log(&w, "q.log", "Processing queues: medium");
    send_signal(&q, SIGSTOP);
    // A slow first event, then 7 quick ones, all queued before the other
    // poller starts: its first batch claim takes all 8 (queued while it
    // runs, the 7 could miss that claim and wait unclaimed).
    w.queue_records(1, "medium", "k", 800).await;
    w.queue_records(7, "medium", "after", 0).await;
    let mut p = w.spawn("p.log", &["--queues", "medium", "--concurrency", "1"]);
    let records = w.wait_records(Duration::from_secs(30), "k-0 to start", |r| {
        r.iter().any(|r| r.tag == "k-0" && r.what == "start")
    });
    let p_pid = records[0].pid;
    let held = claimed(&w);
    send_signal(&q, SIGCONT);
    send_signal(&p, SIGKILL);
    let killed_ms = action_event::envelope::now_ms();
    let _ = p.wait();
    assert_eq!(held, 8, "the killed poller held 8 claimed events");

    let records = w.wait_records(Duration::from_secs(20), "all 8 to end", |r| {
        r.iter()
            .filter(|r| r.what == "end" && (r.tag == "k-0" || r.tag.starts_with("after-")))
            .count()
            == 8
    });
    let q_pid = q.id();
    let ends: Vec<&Record> = records.iter().filter(|r| r.what == "end").collect();
    assert!(ends.iter().all(|r| r.pid == q_pid), "the survivor ran them");
    let last = ends.iter().map(|r| r.ms).max().expect("ends");
    let took = Duration::from_millis(last.saturating_sub(killed_ms));
    eprintln!(
        "the survivor ran all 8 events of the killed poller {:?} after the kill (lease 30 s)",
        took
    );
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}, not within 2 s"
    );
    assert!(
        records
            .iter()
            .all(|r| r.pid != p_pid || r.tag == "k-0" && r.what == "start"),
        "the killed poller started k-0 only"
    );
    stop(&mut q, "survivor");
    let records = w.records();
    assert_exactly_once(&records, 1, "k");
    assert_exactly_once(&records, 7, "after");
    assert!(
        w.log("q.log").contains("is gone"),
        "the survivor says why they came back:\n{}",
        w.log("q.log")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_empty_waits_for_the_events_of_a_killed_poller() {
    let w = world();
    // The survivor is busy with a long event while the other poller claims.
    w.queue_records(1, "medium", "s", 3000).await;
    let mut s = w.spawn(
        "s.log",
        &[
            "--queues",
            "medium",
            "--concurrency",
            "1",
            "--exit-when-empty",
        ],
    );
    w.wait_records(Duration::from_secs(30), "s-0 to start", |r| {
        r.iter().any(|r| r.tag == "s-0")
    });
    w.queue_records(1, "medium", "k", 1500).await;
    w.queue_records(7, "medium", "after", 0).await;
    let mut p = w.spawn("p.log", &["--queues", "medium", "--concurrency", "1"]);
    w.wait_records(Duration::from_secs(30), "k-0 to start", |r| {
        r.iter().any(|r| r.tag == "k-0")
    });
    send_signal(&p, SIGKILL);
    let _ = p.wait();
    let status = wait_child(&mut s, Duration::from_secs(60), "survivor");
    let log = w.log("s.log");
    assert!(status.success(), "{log}");
    let records = w.records();
    assert_exactly_once(&records, 1, "s");
    assert_exactly_once(&records, 1, "k");
    assert_exactly_once(&records, 7, "after");
    let s_pid = s.id();
    assert!(
        records
            .iter()
            .filter(|r| r.what == "end")
            .all(|r| r.pid == s_pid),
        "the survivor ran every event before it exited"
    );
    assert!(log.contains("All queues are empty"), "{log}");
}

/// The default `sqlite://action_event.db` is relative to the working
/// directory; the poller and `queue` log the absolute path once.
#[test]
fn a_relative_url_is_the_working_directory_and_its_absolute_path_is_logged() {
    let w = World::new(&Backend::Sqlite);
    let abs = std::fs::canonicalize(w.path())
        .expect("temp dir")
        .join("action_event.db");
    let logged = format!("SQLite database: {}", abs.display());
    let out = w
        .poller(&["queue", "record", "tag=q-0"])
        .env("ACTION_EVENT_URL", "sqlite://action_event.db")
        .output()
        .expect("queue");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches(&logged).count(),
        1,
        "`{logged}` once in:\n{err}"
    );
    let out = w
        .poller(&["--exit-when-empty", "--queues", "medium"])
        .env("ACTION_EVENT_URL", "sqlite://action_event.db")
        .output()
        .expect("poller");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches(&logged).count(),
        1,
        "`{logged}` once in:\n{err}"
    );
    assert!(abs.exists());
    assert_exactly_once(&w.records(), 1, "q");
}

/// A SQLite URL whose directory does not exist stops the poller with an
/// error naming the directory and the fix; nothing is created.
#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let w = World::new(&Backend::Sqlite);
    let dir = std::fs::canonicalize(w.path()).expect("temp dir");
    for (url, missing) in [
        (
            format!("sqlite://{}/nonexistent/dir/x.db", dir.display()),
            dir.join("nonexistent/dir"),
        ),
        ("sqlite://nodir/x.db".to_string(), dir.join("nodir")),
    ] {
        let out = w
            .poller(&["--exit-when-empty"])
            .env("ACTION_EVENT_URL", &url)
            .output()
            .expect("poller");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{url}: {err}");
        assert!(
            err.contains(&format!("`{}`", missing.display())) && err.contains("create it"),
            "{url}: {err}"
        );
        assert!(!missing.exists(), "{url}: nothing is created");
    }
}
