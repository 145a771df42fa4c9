//! `poller pause QUEUE` / `poller resume QUEUE` with two real poller
//! processes, on each backend: the pause stops the queue on both within a
//! second (running events finish, no event of it starts after that, events
//! queued meanwhile wait and are counted), the other queues keep running,
//! `poller status` shows it, and resume restarts it on both within a second
//! with nothing lost and nothing run twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use action_event::envelope::now_ms;

use crate::common::*;

/// How soon both pollers must obey a pause or a resume.
const WITHIN_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_a_queue_on_two_pollers_and_resume_restarts_it() {
    for backend in backends() {
        pause_and_resume(&backend).await;
    }
}

async fn pause_and_resume(backend: &Backend) {
    let w = World::new(backend);
    let what = format!("{backend:?}");
    // Made before the pollers start: three processes creating one SQLite
    // file at once may find it locked while it switches to WAL.
    let client = w.client().await;
    let mut a = w.spawn("a.log", &["--id", "a", "--concurrency", "2", "start"]);
    let mut b = w.spawn("b.log", &["--id", "b", "--concurrency", "2", "start"]);

    // A backlog on `low` that both pollers work through (4 slots, 150 ms each).
    let before: Vec<String> = w
        .queue_records(60, "low", "before", 150)
        .await
        .iter()
        .map(|id| id.to_string())
        .collect();
    w.wait_records(
        Duration::from_secs(30),
        "both pollers running low events",
        |r| {
            r.iter()
                .filter(|r| r.what == "start")
                .map(|r| r.pid)
                .collect::<HashSet<_>>()
                .len()
                == 2
        },
    );

    let out = w.run_ok(&["pause", "low"]);
    assert!(out.contains("Paused queue low"), "{what}: {out}");
    let paused_at = now_ms();
    // Events queued after the pause wait.
    let during = w.queue_records(5, "low", "during", 0).await;
    // Other queues keep running.
    w.queue_records(3, "high", "high-while-paused", 0).await;
    w.wait_records(
        Duration::from_secs(10),
        "high events while low is paused",
        |r| {
            r.iter()
                .filter(|r| r.what == "end" && r.tag.starts_with("high-while-paused"))
                .count()
                == 3
        },
    );

    // Nothing of `low` starts 1 s after the pause; what was running ends.
    std::thread::sleep(Duration::from_millis(WITHIN_MS + 300));
    let records = w.records();
    let late: Vec<&Record> = records
        .iter()
        .filter(|r| {
            r.what == "start" && r.tag.starts_with("before") && r.ms > paused_at + WITHIN_MS
        })
        .collect();
    assert!(
        late.is_empty(),
        "{what}: low events started over 1 s after the pause: {late:?}"
    );
    let started: HashSet<&str> = records
        .iter()
        .filter(|r| r.what == "start" && r.tag.starts_with("before"))
        .map(|r| r.tag.as_str())
        .collect();
    let ended = records
        .iter()
        .filter(|r| r.what == "end" && r.tag.starts_with("before"))
        .count();
    assert_eq!(
        ended,
        started.len(),
        "{what}: every low event in flight at the pause finished"
    );
    assert!(
        started.len() < before.len(),
        "{what}: the pause came too late to hold anything back"
    );
    assert!(
        records.iter().all(|r| !r.tag.starts_with("during")),
        "{what}: an event queued after the pause ran"
    );
    // ... and every other one waits in the queue (given back by both pollers).
    let want = (before.len() - started.len() + during.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let waiting = client.broker().depth("low").await.expect("depth").waiting;
        if waiting == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {waiting} events wait in low, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = w.run_ok(&["status", "--pid-dir", "none"]);
    assert!(status.contains("Paused queues: low"), "{what}: {status}");

    // A poller told to exit when empty does not wait for a paused queue,
    // and says what waits there.
    let out = w.run(&["--exit-when-empty"]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {log}");
    assert!(
        log.contains(&format!(
            "{want} event(s) wait in paused queues: low ({want})"
        )),
        "{what}: {log}"
    );

    let out = w.run_ok(&["resume", "low"]);
    assert!(out.contains("Resumed queue low"), "{what}: {out}");
    let resumed_at = now_ms();
    let records = w.wait_records(
        Duration::from_secs(30),
        "every low event after resume",
        |r| {
            r.iter()
                .filter(|r| {
                    r.what == "end" && (r.tag.starts_with("before") || r.tag.starts_with("during"))
                })
                .count()
                >= before.len() + during.len()
        },
    );
    // Both pollers start events again within a second of the resume.
    for child in [&a, &b] {
        let first = records
            .iter()
            .filter(|r| r.what == "start" && r.pid == child.id() && r.ms >= resumed_at)
            .map(|r| r.ms)
            .min();
        let first = first
            .unwrap_or_else(|| panic!("{what}: poller {} took nothing after resume", child.id()));
        assert!(
            first <= resumed_at + WITHIN_MS,
            "{what}: poller {} started its first event {} ms after resume",
            child.id(),
            first - resumed_at
        );
    }
    // Nothing lost, nothing twice.
    for (tag, n) in ends_by_tag(&records) {
        assert_eq!(n, 1, "{what}: {tag} ran {n} times");
    }
    for log in ["a.log", "b.log"] {
        let text = w.log(log);
        assert!(
            text.contains("Queue `low` is paused"),
            "{what} {log}:\n{text}"
        );
        assert!(
            text.contains("Queue `low` resumed"),
            "{what} {log}:\n{text}"
        );
    }

    // A queue name nobody uses is refused, naming the known queues.
    let out = w.run(&["pause", "lwo"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert!(
        err.contains("`lwo`") && err.contains("medium") && err.contains("--force"),
        "{what}: {err}"
    );

    stop(&mut a, "poller a");
    stop(&mut b, "poller b");
}
