//! `amqps://` end to end: real poller processes (tests/support/e2e_poller.rs)
//! over TLS, against a private RabbitMQ node with a TLS listener whose
//! certificate a throwaway CA signed (`RabbitNode::start_tls`).
//!
//! Without `rabbitmq-server` installed the test prints `SKIPPED: ...` and
//! passes, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use action_event_test_support::rabbit_node;

use std::time::{Duration, Instant};

use crate::common::*;
use rabbit_node::RabbitNode;

/// A private node with a TLS listener, or `None` after a loud message.
fn tls_node() -> Option<RabbitNode> {
    if !rabbit_node::available_or_skip() {
        return None;
    }
    Some(RabbitNode::start_tls(""))
}

const PASSWORD: &str = "s3cret-pw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_runs_events_queued_over_amqps() {
    let Some(node) = tls_node() else { return };
    node.ctl_ok(&["add_user", "ae", PASSWORD]);
    node.ctl_ok(&["set_permissions", "-p", "/", "ae", ".*", ".*", ".*"]);
    let port = node.tls_port().expect("tls port");
    let ca = node.tls_files().expect("tls files").ca.clone();
    let base = format!("amqps://ae:{PASSWORD}@localhost:{port}/%2f");
    // `poller queue` and `poller status` trust the CA through the URL ...
    let w = World::amqp_at(&format!("{base}?cacertfile={}", ca.display()));
    let prefix = w.url.split("prefix=").nth(1).expect("prefix").to_string();
    for i in 0..3 {
        w.run_ok(&[
            "queue",
            "record",
            &format!("tag=tls-{i}"),
            "sleep_ms=0",
            "queue=medium",
        ]);
    }

    // ... the poller through SSL_CERT_FILE (rustls-native-certs reads it).
    let poller_url = format!("{base}?prefix={prefix}");
    let log = std::fs::File::create(w.path().join("p.log")).expect("log");
    let mut poller = w
        .poller(&["--id", "tls", "--queues", "medium", "start"])
        .env("ACTION_EVENT_URL", &poller_url)
        .env("SSL_CERT_FILE", &ca)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn poller");
    let records = w.wait_records(Duration::from_secs(60), "3 events over amqps", |r| {
        r.iter().filter(|r| r.what == "end").count() >= 3
    });
    assert_eq!(ends_by_tag(&records).len(), 3, "{records:?}");
    assert!(records.iter().all(|r| r.pid == poller.id()), "{records:?}");

    // `poller status` over amqps sees the poller through the broker.
    let started = Instant::now();
    let stdout = loop {
        let stdout = w.run_ok(&["status", "--pid-dir", "none"]);
        if stdout.contains(&format!(" {} ", poller.id())) {
            break stdout;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "status over amqps never listed the poller:\n{stdout}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stdout.contains("Pollers on amqps://ae:***@"), "{stdout}");
    assert!(!stdout.contains(PASSWORD), "{stdout}");

    // Every client connection of the node is a TLS one.
    let flags = node.ctl_ok(&["list_connections", "user", "ssl", "--no-table-headers"]);
    let rows: Vec<&str> = flags.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !rows.is_empty()
            && rows
                .iter()
                .all(|l| l.split_whitespace().nth(1) == Some("true")),
        "{flags}"
    );

    stop(&mut poller, "the amqps poller");
    let log = w.log("p.log");
    assert!(log.contains("amqps://ae:***@"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");

    // Without the CA the CLI fails at once, naming the certificate, no password.
    let started = Instant::now();
    let out = w
        .poller(&["queue", "record", "tag=never"])
        .env("ACTION_EVENT_URL", &poller_url)
        .output()
        .expect("run queue");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
    assert!(
        stderr.contains("invalid peer certificate") && stderr.contains("cacertfile"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}
