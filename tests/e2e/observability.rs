//! Logs and metrics of real poller processes (tests/support/e2e_poller.rs):
//! the human lines of the original, JSON lines with the event's span,
//! `RUST_LOG`, the registry at start, and `--metrics` scraped over HTTP
//! while the poller runs.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use crate::common::*;
use action_event::QueueRequest;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `GET path` on 127.0.0.1:port: (status line, body), or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// One sample of the text format: metric name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Parses the samples of the Prometheus/OpenMetrics text format.
fn parse_metrics(text: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let labels = rest
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("k=\"v\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.insert(Key { name, labels }, value);
    }
    out
}

fn get(m: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let key = Key {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    m.get(&key).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_counters_a_histogram_and_queue_depth() {
    for backend in backends() {
        let w = World::new(&backend);
        w.queue_records(5, "medium", "m", 0).await;
        let client = w.client().await;
        let send = |req: QueueRequest| {
            let client = client.clone();
            async move { client.send(req).await.expect("queue") }
        };
        // Fails once, then completes: one retry.
        send(
            QueueRequest::foreign("flaky")
                .param("tag", "f")
                .param("fail_times", 1)
                .queue("medium"),
        )
        .await;
        // Panics on both of its attempts: one retry, then dead.
        send(
            QueueRequest::foreign("boom")
                .param("tag", "b")
                .queue("medium"),
        )
        .await;
        send(
            QueueRequest::foreign("halted")
                .param("tag", "h")
                .queue("medium"),
        )
        .await;
        // Waits an hour: the one event left waiting.
        send(
            QueueRequest::foreign("record")
                .param("tag", "later")
                .queue("medium")
                .delay(Duration::from_secs(3600)),
        )
        .await;

        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut p = w.spawn(
            "p.log",
            &[
                "--queues",
                "medium",
                "--metrics",
                &addr,
                "--retry-base",
                "100ms",
                "--retry-max",
                "200ms",
            ],
        );

        // Scrape while it runs, until everything but the delayed event settled.
        let started = Instant::now();
        let m = loop {
            if let Some((status, body)) = http_get(port, "/metrics") {
                assert!(status.contains("200"), "{status}\n{body}");
                let m = parse_metrics(&body);
                let settled = get(
                    &m,
                    "action_event_events_processed_total",
                    &[("event", "record"), ("queue", "medium")],
                ) == Some(5.0)
                    && get(
                        &m,
                        "action_event_events_processed_total",
                        &[("event", "flaky"), ("queue", "medium")],
                    ) == Some(2.0)
                    && get(
                        &m,
                        "action_event_events_dead_total",
                        &[("event", "boom"), ("queue", "medium")],
                    ) == Some(1.0)
                    && get(
                        &m,
                        "action_event_events_halted_total",
                        &[("event", "halted"), ("queue", "medium")],
                    ) == Some(1.0);
                if settled {
                    break m;
                }
            }
            if started.elapsed() > Duration::from_secs(90) {
                let _ = p.kill();
                panic!(
                    "{backend:?}: metrics did not settle; last scrape: {:?}\nlog:\n{}",
                    http_get(port, "/metrics"),
                    w.log("p.log")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };

        let eq = |name: &str, labels: &[(&str, &str)], want: f64| {
            assert_eq!(
                get(&m, name, labels),
                Some(want),
                "{backend:?}: {name}{labels:?}"
            );
        };
        let medium = |event: &'static str| [("event", event), ("queue", "medium")];
        eq("action_event_events_failed_total", &medium("flaky"), 1.0);
        eq("action_event_events_retried_total", &medium("flaky"), 1.0);
        eq("action_event_events_failed_total", &medium("boom"), 2.0);
        eq("action_event_events_retried_total", &medium("boom"), 1.0);
        eq("action_event_events_processed_total", &medium("boom"), 2.0);
        eq(
            "action_event_events_processed_total",
            &medium("halted"),
            1.0,
        );
        assert_eq!(
            get(&m, "action_event_events_failed_total", &medium("record")),
            None
        );

        // The histogram: every run of `record` is in the +Inf bucket and in
        // the count, and the buckets are cumulative.
        eq(
            "action_event_event_duration_seconds_bucket",
            &[("event", "record"), ("le", "+Inf")],
            5.0,
        );
        eq(
            "action_event_event_duration_seconds_count",
            &[("event", "record")],
            5.0,
        );
        let buckets: Vec<(f64, f64)> = m
            .iter()
            .filter(|(k, _)| {
                k.name == "action_event_event_duration_seconds_bucket"
                    && k.labels.get("event").map(String::as_str) == Some("record")
            })
            .map(|(k, v)| (k.labels["le"].parse::<f64>().expect("le"), *v))
            .collect();
        assert!(buckets.len() > 5, "{buckets:?}");
        let mut sorted = buckets.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(sorted.windows(2).all(|w| w[0].1 <= w[1].1), "{sorted:?}");
        assert!(
            get(
                &m,
                "action_event_event_duration_seconds_sum",
                &[("event", "record")]
            )
            .is_some_and(|s| s > 0.0)
        );

        // From the broker at scrape time: nothing is ready; the delayed
        // event is scheduled (counted per queue by SQLite only: RabbitMQ's
        // delay queues are shared by every queue).
        eq("action_event_events_waiting", &[("queue", "medium")], 0.0);
        let scheduled = |m: &BTreeMap<Key, f64>| {
            get(m, "action_event_events_scheduled", &[("queue", "medium")])
        };
        match backend {
            Backend::Sqlite | Backend::Postgres => assert_eq!(scheduled(&m), Some(1.0)),
            Backend::Amqp => assert_eq!(scheduled(&m), None),
        }
        let age = get(
            &m,
            "action_event_oldest_waiting_age_seconds",
            &[("queue", "medium")],
        )
        .expect("oldest age");
        assert!(age >= 0.0, "{age}");
        assert!(get(&m, "action_event_pollers_alive", &[]).is_some_and(|n| n >= 1.0));

        // Queued after the poller started: the gauge follows the broker.
        send(
            QueueRequest::foreign("record")
                .param("tag", "later2")
                .queue("medium")
                .delay(Duration::from_secs(3600)),
        )
        .await;
        let (_, body) = http_get(port, "/metrics").expect("scrape");
        let m2 = parse_metrics(&body);
        if let Backend::Sqlite | Backend::Postgres = backend {
            assert_eq!(scheduled(&m2), Some(2.0), "{backend:?}");
        }

        let (status, _) = http_get(port, "/nope").expect("answer");
        assert!(status.contains("404"), "{status}");

        send_signal(&p, SIGTERM);
        let status = wait_child(&mut p, Duration::from_secs(30), "poller");
        let log = w.log("p.log");
        assert!(status.success(), "{log}");
        assert!(
            log.contains(&format!("Serving metrics on http://{addr}/metrics")),
            "{log}"
        );
    }
}

#[test]
fn metrics_on_an_address_in_use_are_served_once_it_is_free() {
    let w = World::new(&Backend::Sqlite);
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = blocker.local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let mut p = w.spawn("p.log", &["--queues", "medium", "--metrics", &addr]);
    let started = Instant::now();
    while !w.log("p.log").contains("is in use") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no warning:\n{}",
            w.log("p.log")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(blocker);
    let served = loop {
        if let Some((status, body)) = http_get(port, "/metrics")
            && status.contains("200")
            && body.contains("action_event_events_waiting")
        {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    send_signal(&p, SIGTERM);
    let status = wait_child(&mut p, Duration::from_secs(30), "poller");
    assert!(served, "never served:\n{}", w.log("p.log"));
    assert!(status.success(), "{}", w.log("p.log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_event_span_on_every_line() {
    let w = World::new(&Backend::Sqlite);
    let ids = w.queue_records(1, "medium", "j", 0).await;
    let out = w.run(&[
        "--log-format",
        "json",
        "--exit-when-empty",
        "--queues",
        "medium",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        lines
            .iter()
            .any(|v| message(v) == "Processing queues: medium"),
        "{stderr}"
    );
    // The registry at start: every event with its queue, retries and chain.
    assert!(
        lines.iter().any(|v| message(v).contains("halted (e2e_poller::HaltedEvent) queue=medium retries=10 timeout=none chain=[halt_always]")),
        "{stderr}"
    );
    for prefix in ["Processing medium:", "Finished processing medium:"] {
        let line = lines
            .iter()
            .find(|v| message(v).starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in\n{stderr}"));
        let span = &line["span"];
        assert_eq!(span["name"], "event", "{line}");
        assert_eq!(span["event"], "record", "{line}");
        assert_eq!(span["queue"], "medium", "{line}");
        assert_eq!(span["attempt"], 1, "{line}");
        assert_eq!(span["id"], ids[0].to_string(), "{line}");
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_logs_keep_the_original_lines_and_rust_log_is_respected() {
    let w = World::new(&Backend::Sqlite);
    let ids = w.queue_records(1, "medium", "h", 0).await;
    let out = w.run(&["--exit-when-empty", "--queues", "medium"]);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{log}"))
            .to_string()
    };
    // `<timestamp>  INFO <the original's text>`, nothing in between.
    for (needle, text) in [
        ("Processing queues", "Processing queues: medium".to_string()),
        (
            "Processing medium:",
            format!(
                r#"Processing medium:{} ({{"sleep_ms":0,"tag":"h-0"}})"#,
                ids[0]
            ),
        ),
    ] {
        let l = line(needle);
        let (stamp, rest) = l.split_once(' ').expect("timestamp");
        assert!(stamp.ends_with('Z') && stamp.contains('T'), "{l}");
        assert_eq!(rest.trim_start(), format!("INFO {text}"), "{l}");
    }
    let finished = line("Finished processing medium:");
    assert!(
        finished.contains(&format!("INFO Finished processing medium:{} (", ids[0])),
        "{finished}"
    );
    // The registry at start.
    line("record (e2e_poller::RecordEvent) queue=medium retries=10 timeout=none chain=[]");
    line("flaky (e2e_poller::FlakyEvent) queue=medium retries=3");

    // RUST_LOG=warn: the info lines are gone, the work is done.
    w.queue_records(1, "medium", "quiet", 0).await;
    let out = w
        .poller(&["--exit-when-empty", "--queues", "medium"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("Processing"), "{log}");
    assert_eq!(ends_by_tag(&w.records()).get("quiet-0"), Some(&1));
}
