//! `poller status` lists the live pollers the broker knows, not only the
//! PID files of this machine: on RabbitMQ and PostgreSQL those of every
//! machine, on SQLite those of the file, with or without `--id`.

use std::time::{Duration, Instant};

use crate::common::*;

/// Runs `status` until its output satisfies `cond` (the broker answers
/// within a moment, but a killed poller's queue may take a beat to go).
fn status_until(w: &World, args: &[&str], limit: Duration, cond: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let out = w.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "status failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if cond(&stdout) {
            return stdout;
        }
        if started.elapsed() > limit {
            panic!(
                "status never showed what was expected within {limit:?}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The broker table's row of the poller with this pid.
fn row_of(stdout: &str, pid: u32) -> Option<String> {
    let table = stdout.split("Pollers on ").nth(1)?;
    table
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(pid.to_string().as_str()))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_live_pollers_on_every_backend() {
    for backend in backends() {
        eprintln!("--- {backend:?}");
        status_lists_the_live_pollers(&backend).await;
    }
}

/// Two pollers, one with `--id` and a PID dir of its own, one with neither
/// (SQLite: the poller reports in the file; RabbitMQ: status requests;
/// PostgreSQL: the owners table): `status` with an empty PID dir lists both
/// from the broker, with what each runs, and drops a killed one.
async fn status_lists_the_live_pollers(backend: &Backend) {
    let w = World::new(backend);
    let a = w.spawn(
        "a.log",
        &[
            "--id",
            "alpha",
            "--pid-dir",
            "pids-a",
            "--queues",
            "medium low",
            "--concurrency",
            "2",
            "start",
        ],
    );
    let b = w.spawn(
        "b.log",
        &["--queues", "medium", "--concurrency", "3", "start"],
    );
    let ids = w.queue_records(1, "medium", "slow", 4000).await;
    let event_id = ids[0].to_string();
    let records = w.wait_records(Duration::from_secs(30), "the slow event to start", |r| {
        r.iter().any(|r| r.what == "start" && r.tag == "slow-0")
    });
    let busy = records
        .iter()
        .find(|r| r.tag == "slow-0")
        .expect("start")
        .pid;
    assert!(busy == a.id() || busy == b.id(), "{busy}");
    std::fs::create_dir_all(w.path().join("pids-none")).expect("dir");
    let args = ["status", "--pid-dir", "pids-none"];

    // SQLite and PostgreSQL pollers rewrite their report every second: wait
    // for the one that shows the slow event.
    let stdout = status_until(&w, &args, Duration::from_secs(20), |s| {
        row_of(s, a.id()).is_some()
            && row_of(s, b.id()).is_some()
            && row_of(s, busy).is_some_and(|r| r.contains("1: record:"))
    });
    eprintln!("{stdout}");
    assert!(stdout.contains("No pollers in pids-none"), "{stdout}");
    assert!(stdout.contains("Pollers on "), "{stdout}");
    assert!(
        stdout.contains("ID       HOST") && stdout.contains("IN-FLIGHT"),
        "{stdout}"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let ra = row_of(&stdout, a.id()).expect("alpha's row");
    let rb = row_of(&stdout, b.id()).expect("beta's row");
    let cols_a: Vec<&str> = ra.split_whitespace().collect();
    let cols_b: Vec<&str> = rb.split_whitespace().collect();
    assert_eq!(cols_a[0], "alpha", "{stdout}");
    assert_eq!(cols_b[0], "-", "{stdout}");
    if !host.is_empty() {
        assert_eq!(cols_a[1], host, "{stdout}");
        assert_eq!(cols_b[1], host, "{stdout}");
    }
    assert_eq!(cols_a[3], "medium,low", "{stdout}");
    assert_eq!(cols_b[3], "medium", "{stdout}");
    assert_eq!(cols_a[4], "2", "{stdout}");
    assert_eq!(cols_b[4], "3", "{stdout}");
    // The slow event is in flight in the poller that took it, and only there.
    let (busy_row, idle_row) = if busy == a.id() {
        (&ra, &rb)
    } else {
        (&rb, &ra)
    };
    assert!(
        busy_row.contains(&format!("1: record:{event_id}")),
        "the in-flight event should show: {stdout}"
    );
    assert!(idle_row.split_whitespace().nth(5) == Some("0"), "{stdout}");
    // Sorted by host then id: `-` before alpha.
    assert!(
        stdout.find(&rb).unwrap() < stdout.find(&ra).unwrap(),
        "{stdout}"
    );

    // A killed poller vanishes from the list (RabbitMQ: its exclusive queue
    // dies with its connection; SQLite and PostgreSQL: its process or its
    // session is gone).
    let (mut idle, mut keep) = if busy == a.id() { (b, a) } else { (a, b) };
    send_signal(&idle, SIGKILL);
    let _ = idle.wait();
    let stdout = status_until(&w, &args, Duration::from_secs(20), |s| {
        row_of(s, idle.id()).is_none() && row_of(s, keep.id()).is_some()
    });
    eprintln!("{stdout}");

    stop(&mut keep, "the busy poller");
    let records = w.records();
    assert_eq!(of_tag(&records, "slow-0").len(), 2, "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_against_a_broker_that_does_not_answer_warns_and_exits_0() {
    let w = World::new(&Backend::Sqlite);
    // Nothing listens on port 1.
    let url = "amqp://guest:secret@127.0.0.1:1/%2f";
    let started = Instant::now();
    let out = w
        .poller(&["status", "--broker", url])
        .output()
        .expect("run status");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(stdout.contains("No pollers in tmp/pids"), "{stdout}");
    assert!(!stdout.contains("Pollers on"), "{stdout}");
    let warning: Vec<&str> = stderr.lines().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warning.len(), 1, "{stderr}");
    assert!(
        warning[0].contains("cannot list the pollers of other machines"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_against_a_broker_that_accepts_but_never_answers_is_bounded() {
    let w = World::new(&Backend::Sqlite);
    // Accepts TCP connections (the backlog does) but never speaks AMQP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    let out = w
        .poller(&["status", "--broker", &url])
        .output()
        .expect("run status");
    let took = started.elapsed();
    drop(listener);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(stdout.contains("No pollers in tmp/pids"), "{stdout}");
    assert!(
        stderr.contains("warning: cannot list the pollers of other machines")
            && stderr.contains("did not answer within 5s"),
        "{stderr}"
    );
}
