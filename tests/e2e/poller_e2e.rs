//! End to end: real poller processes (tests/support/e2e_poller.rs) on a real
//! broker, killed with real signals. Every test runs against every backend
//! this machine offers (SQLite always, RabbitMQ when it answers).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

fn assert_exactly_once(records: &[Record], n: usize, tag: &str) {
    let ends = ends_by_tag(records);
    for i in 0..n {
        let t = format!("{tag}-{i}");
        assert_eq!(
            ends.get(&t).copied().unwrap_or(0),
            1,
            "{t} must end exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_pollers_with_concurrency_4_share_5000_events_exactly_once() {
    let _heavy = HEAVY.lock().await;
    for backend in backends() {
        let w = World::new(&backend);
        let n = 5000;
        // All four are up before the events come, so each gets a share
        // (a fast backend drains 5,000 no-op events before a late poller starts).
        let mut children: Vec<_> = (0..4)
            .map(|i| {
                w.spawn(
                    &format!("p{i}.log"),
                    &["--concurrency", "4", "--queues", "medium"],
                )
            })
            .collect();
        for i in 0..4 {
            wait_log(&w, &format!("p{i}.log"), "Processing queues: medium");
        }
        w.queue_records(n, "medium", "e", 0).await;
        let records = w.wait_records(Duration::from_secs(240), "5000 events to end", |r| {
            r.iter().filter(|r| r.what == "end").count() >= n
        });
        for c in &children {
            send_signal(c, SIGTERM);
        }
        for (i, c) in children.iter_mut().enumerate() {
            let status = wait_child(c, Duration::from_secs(60), "poller");
            assert!(
                status.success(),
                "{backend:?} poller {i} failed:\n{}",
                w.log(&format!("p{i}.log"))
            );
        }
        let records = if records.len() < w.records().len() {
            w.records()
        } else {
            records
        };
        assert_exactly_once(&records, n, "e");
        let starts = records.iter().filter(|r| r.what == "start").count();
        assert_eq!(
            starts, n,
            "{backend:?}: no event may start twice on the happy path"
        );
        let pids: HashSet<u32> = records.iter().map(|r| r.pid).collect();
        assert!(
            pids.len() >= 2,
            "{backend:?}: the pollers should share the work, got {pids:?}"
        );
        eprintln!("{backend:?}: 5000 events over {} pollers", pids.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_priority_with_backlog_at_concurrency_1_and_8() {
    for backend in backends() {
        for concurrency in ["1", "8"] {
            let w = World::new(&backend);
            // Queued low first, so a FIFO would get it wrong.
            w.queue_records(300, "low", "l", 0).await;
            w.queue_records(300, "medium", "m", 0).await;
            w.queue_records(300, "high", "h", 0).await;
            let mut c = w.spawn(
                "p.log",
                &[
                    "--concurrency",
                    concurrency,
                    "--exit-when-empty",
                    "--queues",
                    "high medium low",
                ],
            );
            let status = wait_child(&mut c, Duration::from_secs(120), "poller");
            let log = w.log("p.log");
            assert!(status.success(), "{log}");
            assert!(log.contains("Processing queues: high,medium,low"), "{log}");
            let order = processing_order(&log);
            assert_eq!(order.len(), 900, "{backend:?} c={concurrency}");
            let last_high = order.iter().rposition(|q| q == "high").expect("highs");
            let first_medium = order.iter().position(|q| q == "medium").expect("mediums");
            let last_medium = order.iter().rposition(|q| q == "medium").expect("mediums");
            let first_low = order.iter().position(|q| q == "low").expect("lows");
            assert!(
                last_high < first_medium && last_medium < first_low,
                "{backend:?} c={concurrency}: started out of priority order: high up to {last_high}, medium from {first_medium} to {last_medium}, low from {first_low}"
            );
            assert_exactly_once(&w.records(), 300, "h");
            assert_exactly_once(&w.records(), 300, "l");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_poller_with_the_same_id_takes_over_without_interrupting_the_old_one() {
    for backend in backends() {
        let w = World::new(&backend);
        w.queue_records(1, "medium", "slow", 3000).await;
        // The old poller: foreground with a PID file, so the test can read its exit status.
        let mut old = w.spawn("old.log", &["--id", "1", "start"]);
        w.wait_records(Duration::from_secs(30), "the slow event to start", |r| {
            r.iter().any(|r| r.what == "start" && r.tag == "slow-0")
        });
        // The new one: a daemon with the same id.
        let out = w.run(&["--daemon", "--id", "1", "start"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = wait_child(&mut old, Duration::from_secs(30), "old poller");
        assert!(
            status.success(),
            "old poller must exit 0:\n{}",
            w.log("old.log")
        );
        let old_log = w.log("old.log");
        assert!(old_log.contains("PID file now names pid"), "{old_log}");
        assert!(old_log.contains("Finished processing medium:"), "{old_log}");
        // The slow event ran once, to the end, in the old poller.
        let records = w.records();
        let slow: Vec<_> = records.iter().filter(|r| r.tag == "slow-0").collect();
        assert_eq!(slow.len(), 2, "start and end once: {slow:?}");
        assert_eq!(slow[0].pid, old.id());
        assert_eq!(slow[1].pid, old.id());
        // The new one processes what follows.
        w.queue_records(3, "medium", "next", 0).await;
        let records = w.wait_records(Duration::from_secs(30), "the next events", |r| {
            r.iter()
                .filter(|r| r.what == "end" && r.tag.starts_with("next-"))
                .count()
                == 3
        });
        let new_pid = std::fs::read_to_string(w.path().join("tmp/pids/poller.1.pid"))
            .expect("pid file")
            .trim()
            .parse::<u32>()
            .expect("pid");
        assert!(
            records
                .iter()
                .filter(|r| r.tag.starts_with("next-"))
                .all(|r| r.pid == new_pid)
        );
        let out = w.run(&["--id", "1", "stop"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!action_event::poller::process_alive(new_pid));
        assert!(!w.path().join("tmp/pids/poller.1.pid").exists());
        let daemon_log = w.log("log/poller.1.log");
        assert!(
            daemon_log.contains("Taking over poller 1 from pid"),
            "{daemon_log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_event_finishes_it_and_exits() {
    for backend in backends() {
        sigterm_mid_event(&backend, 1500).await;
    }
}

/// The event in hand ends before the SQLite broker's own 1 s give-back of
/// events claimed ahead could act: they must go back when the poller stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_back_at_once_what_was_taken_ahead() {
    for backend in backends() {
        sigterm_mid_event(&backend, 300).await;
    }
}

/// SIGTERM while an event of `ms` runs: it finishes, nothing new starts,
/// and the 5 events queued behind it run exactly once on the next poller,
/// within 10 s (well under a lease): what the first poller took ahead of
/// its free slots (SQLite: claimed in one batch; RabbitMQ: prefetched) went
/// back when it stopped.
async fn sigterm_mid_event(backend: &Backend, ms: u64) {
    let w = World::new(backend);
    w.queue_records(1, "medium", "t", ms).await;
    w.queue_records(5, "medium", "after", 0).await;
    let mut p = w.spawn("p.log", &["--queues", "medium"]);
    w.wait_records(Duration::from_secs(30), "the event to start", |r| {
        r.iter().any(|r| r.tag == "t-0")
    });
    send_signal(&p, SIGTERM);
    let status = wait_child(&mut p, Duration::from_secs(30), "poller");
    let log = w.log("p.log");
    assert!(status.success(), "{log}");
    assert!(log.contains("SIGTERM: taking no new events"), "{log}");
    let records = w.records();
    assert_eq!(ends_by_tag(&records).get("t-0"), Some(&1), "{log}");
    // Nothing new was taken after the signal.
    assert!(
        records.iter().all(|r| !r.tag.starts_with("after-")),
        "{records:?}"
    );
    let mut q = w.spawn("q.log", &["--queues", "medium", "--exit-when-empty"]);
    assert!(wait_child(&mut q, Duration::from_secs(10), "poller").success());
    assert_exactly_once(&w.records(), 5, "after");
    assert_exactly_once(&w.records(), 1, "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_shutdown_timeout_gives_the_event_back() {
    for backend in backends() {
        let w = World::new(&backend);
        w.queue_records(1, "medium", "long", 4000).await;
        let mut p = w.spawn(
            "p.log",
            &["--queues", "medium", "--shutdown-timeout", "500ms"],
        );
        w.wait_records(Duration::from_secs(30), "the event to start", |r| {
            r.iter().any(|r| r.tag == "long-0")
        });
        send_signal(&p, SIGTERM);
        let status = wait_child(&mut p, Duration::from_secs(10), "poller");
        let log = w.log("p.log");
        assert!(status.success(), "{log}");
        assert!(log.contains("Gave back medium:"), "{log}");
        assert_eq!(ends_by_tag(&w.records()).get("long-0"), None);
        // It goes back and completes later, exactly once.
        let mut q = w.spawn("q.log", &["--queues", "medium", "--exit-when-empty"]);
        assert!(wait_child(&mut q, Duration::from_secs(30), "poller").success());
        assert_eq!(
            ends_by_tag(&w.records()).get("long-0"),
            Some(&1),
            "{}",
            w.log("q.log")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_gives_back_at_once() {
    for backend in backends() {
        let w = World::new(&backend);
        w.queue_records(1, "medium", "long", 20000).await;
        let mut p = w.spawn("p.log", &["--queues", "medium"]);
        w.wait_records(Duration::from_secs(30), "the event to start", |r| {
            r.iter().any(|r| r.tag == "long-0")
        });
        send_signal(&p, SIGINT);
        std::thread::sleep(Duration::from_millis(300));
        send_signal(&p, SIGTERM);
        let status = wait_child(
            &mut p,
            Duration::from_secs(5),
            "poller after a second signal",
        );
        let log = w.log("p.log");
        assert!(status.success(), "{log}");
        assert!(log.contains("again: giving back events in hand"), "{log}");
        let client = w.client().await;
        let depth = client.broker().depth("medium").await.expect("depth");
        assert_eq!(depth.waiting, 1, "the event is back in its queue");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_event_runs_it_again_elsewhere() {
    for backend in backends() {
        let w = World::new(&backend);
        w.queue_records(1, "medium", "k", 1000).await;
        let mut p = w.spawn("p.log", &["--queues", "medium"]);
        w.wait_records(Duration::from_secs(30), "the event to start", |r| {
            r.iter().any(|r| r.tag == "k-0")
        });
        send_signal(&p, SIGKILL);
        let _ = p.wait();
        assert_eq!(ends_by_tag(&w.records()).get("k-0"), None);
        // Another poller gets it once the lease lapses (2s in these tests;
        // RabbitMQ requeues it when the dead poller's connection closes).
        let mut q = w.spawn("q.log", &["--queues", "medium"]);
        let records = w.wait_records(Duration::from_secs(30), "the event to run again", |r| {
            r.iter().any(|r| r.what == "end" && r.tag == "k-0")
        });
        send_signal(&q, SIGTERM);
        assert!(wait_child(&mut q, Duration::from_secs(10), "poller").success());
        let starts: Vec<_> = records.iter().filter(|r| r.what == "start").collect();
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert_eq!(starts[1].pid, q.id());
        assert_eq!(ends_by_tag(&w.records()).get("k-0"), Some(&1));
    }
}

/// A poller killed with events taken ahead of its free slots (SQLite:
/// claimed in one batch; RabbitMQ: prefetched) loses none of them: they
/// come back (SQLite: when their lease lapses, 2 s in these tests) and run
/// exactly once on another poller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_taken_ahead() {
    for backend in backends() {
        let w = World::new(&backend);
        w.queue_records(1, "medium", "k", 1000).await;
        w.queue_records(5, "medium", "after", 0).await;
        let mut p = w.spawn("p.log", &["--queues", "medium"]);
        w.wait_records(Duration::from_secs(30), "the event to start", |r| {
            r.iter().any(|r| r.tag == "k-0")
        });
        send_signal(&p, SIGKILL);
        let _ = p.wait();
        assert!(
            w.records().iter().all(|r| !r.tag.starts_with("after-")),
            "the killed poller ran nothing after k-0"
        );
        let mut q = w.spawn("q.log", &["--queues", "medium"]);
        w.wait_records(Duration::from_secs(30), "every event to run", |r| {
            r.iter()
                .filter(|r| r.what == "end" && (r.tag == "k-0" || r.tag.starts_with("after-")))
                .count()
                == 6
        });
        send_signal(&q, SIGTERM);
        assert!(wait_child(&mut q, Duration::from_secs(10), "poller").success());
        assert_exactly_once(&w.records(), 5, "after");
        assert_exactly_once(&w.records(), 1, "k");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_status_and_stale_pid_files() {
    let w = World::new(&Backend::Sqlite);
    let out = w.run(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No pollers in tmp/pids"));

    for id in ["1", "2"] {
        let out = w.run(&[
            "--daemon",
            "--id",
            id,
            "--queues",
            "high medium",
            "--concurrency",
            "2",
            "start",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("poller {id} started (pid")),
            "{stdout}"
        );
    }
    // A stale PID file: a pid that is not running.
    std::fs::write(w.path().join("tmp/pids/poller.7.pid"), "999999\n").expect("write");

    let out = w.run(&["status"]);
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    // The PID-file table, then `Paused queues: none`, then the pollers the
    // file knows (`poller_reports`; status_e2e checks that table).
    let lines: Vec<&str> = status.lines().collect();
    assert!(lines.len() >= 5, "{status}");
    assert_eq!(lines[4], "Paused queues: none", "{status}");
    assert!(status.contains("\nPollers on sqlite://"), "{status}");
    assert!(
        lines[1].starts_with("1 ")
            && lines[1].contains(" yes ")
            && lines[1].contains("high,medium"),
        "{status}"
    );
    assert!(
        lines[2].starts_with("2 ") && lines[2].contains(" yes "),
        "{status}"
    );
    assert!(
        lines[3].starts_with("7 ") && lines[3].contains("999999") && lines[3].contains(" no "),
        "{status}"
    );

    // Starting over a stale PID file replaces it, with a log line.
    let out = w.run(&["--daemon", "--id", "7", "start"]);
    assert!(out.status.success());
    let log = w.log("log/poller.7.log");
    assert!(
        log.contains("Stale PID file") && log.contains("999999"),
        "{log}"
    );

    let out = w.run(&["--id", "2", "stop"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("poller 2: stopped"));
    let out = w.run(&["status"]);
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!status.contains("\n2 "), "{status}");

    // A stale file found by `stop` is removed.
    std::fs::write(w.path().join("tmp/pids/poller.9.pid"), "999998\n").expect("write");
    let out = w.run(&["stop"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("poller 9: stale PID file named pid 999998"),
        "{stdout}"
    );
    assert!(
        stdout.contains("poller 1: stopped") && stdout.contains("poller 7: stopped"),
        "{stdout}"
    );
    assert!(w.run(&["status"]).stdout.starts_with(b"No pollers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_from_the_shell_then_process() {
    for backend in backends() {
        let w = World::new(&backend);
        let out = w.run(&["queue", "record", "tag=shell-0", "sleep_ms=5", "queue=high"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("Queued record on high: "), "{stdout}");
        let out = w.run(&["--exit-when-empty", "--queues", "high"]);
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{log}");
        assert!(
            log.contains(r#"Processing high:"#)
                && log.contains(r#"({"sleep_ms":5,"tag":"shell-0"})"#),
            "{log}"
        );
        assert!(log.contains("Finished processing high:"), "{log}");
        assert_exactly_once(&w.records(), 1, "shell");
    }
}

#[test]
fn a_bad_broker_url_is_a_clear_error_with_the_password_redacted() {
    let w = World::new(&Backend::Sqlite);
    let out = w
        .poller(&[
            "--broker",
            "redis://user:hunter2@localhost/0",
            "--exit-when-empty",
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains("unknown scheme `redis`") && err.contains("user:***@localhost"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}
