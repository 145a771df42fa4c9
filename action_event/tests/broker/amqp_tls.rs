//! `amqps://`: the RabbitMQ backend over TLS (rustls), against a private
//! node with a TLS listener whose certificate a throwaway CA signed
//! (`action_event_test_support::rabbit_node`, `RabbitNode::start_tls`).
//!
//! Without `rabbitmq-server` installed each test prints `SKIPPED: ...` and
//! passes, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

use action_event_test_support::rabbit_node;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use action_event::Envelope;
use action_event::broker::Broker;
use action_event::broker::amqp::AmqpBroker;
use rabbit_node::RabbitNode;

/// A private node with a TLS listener, or `None` after a loud message when
/// none can be started and `ACTION_EVENT_REQUIRE_AMQP` is not `1`.
fn tls_node() -> Option<RabbitNode> {
    if !rabbit_node::available_or_skip() {
        return None;
    }
    Some(RabbitNode::start_tls(""))
}

/// The `ssl` column of every client connection of the node (`true` for TLS).
fn connection_ssl_flags(node: &RabbitNode) -> Vec<String> {
    node.ctl_ok(&["list_connections", "ssl", "--no-table-headers"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_publishes_confirmed_and_takes_with_a_private_ca() {
    let Some(node) = tls_node() else { return };
    let ca = node
        .tls_files()
        .expect("tls files")
        .ca
        .display()
        .to_string();
    // By IP address: the certificate names 127.0.0.1 too (tls_e2e.rs uses `localhost`).
    let port = node.tls_port().expect("tls port");
    let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f?prefix=tls.&cacertfile={ca}");
    let b = AmqpBroker::open(&url).await.expect("open over amqps");
    for n in 0..20 {
        b.publish(&Envelope::new("t", "work", serde_json::json!({ "n": n })))
            .await
            .expect("a confirmed publish over amqps");
    }
    // The broker stored them: 20 ready in the work queue.
    assert_eq!(node.ready("tls.work"), Some(20), "{}", node.log());
    let mut seen = HashSet::new();
    while seen.len() < 20 {
        let Some(d) = b
            .take(&["work".to_string()], Duration::from_secs(5))
            .await
            .expect("take")
        else {
            break;
        };
        let env = Envelope::from_slice(&d.body).expect("an envelope");
        seen.insert(env.params["n"].as_u64().expect("n"));
        b.ack(&d).await.expect("ack over amqps");
    }
    assert_eq!(seen.len(), 20, "every event taken over amqps");
    // Both connections (publish, consume) are TLS connections: the broker says so.
    let flags = connection_ssl_flags(&node);
    assert!(
        flags.len() >= 2 && flags.iter().all(|f| f == "true"),
        "expected only TLS connections, got {flags:?}"
    );
    b.close().await;
    // The acks reached the broker: nothing ready, nothing unacked.
    let out = node.ctl_ok(&["list_queues", "name", "messages", "--no-table-headers"]);
    let left = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some("tls.work"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    assert_eq!(left, "0", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_to_an_untrusted_certificate_fails_fast_naming_it() {
    let Some(node) = tls_node() else { return };
    let port = node.tls_port().expect("tls port");
    // No cacertfile: the throwaway CA is in no trust store. The password
    // must not show in the error.
    let url = format!("amqps://guest:s3cret-pw@localhost:{port}/%2f?prefix=untrusted.");
    let started = Instant::now();
    let res = AmqpBroker::open(&url).await;
    let took = started.elapsed();
    let Err(e) = res else {
        panic!("amqps to an untrusted certificate connected");
    };
    let text = e.to_string();
    eprintln!("error after {took:?}: {text}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(text.contains(&format!("localhost:{port}")), "{text}");

    // A cacertfile that is some other CA: the same.
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = rabbit_node::make_tls_files(other.path()).ca;
    let url = format!(
        "amqps://guest:s3cret-pw@localhost:{port}/%2f?cacertfile={}",
        other_ca.display()
    );
    let started = Instant::now();
    let text = match AmqpBroker::open(&url).await {
        Ok(_) => panic!("amqps with the wrong CA connected"),
        Err(e) => e.to_string(),
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");

    // amqps on the plain AMQP port: an error, not a hang.
    let url = format!("amqps://guest:s3cret-pw@localhost:{}/%2f", node.port());
    let started = Instant::now();
    let text = match AmqpBroker::open(&url).await {
        Ok(_) => panic!("amqps to the plain port connected"),
        Err(e) => e.to_string(),
    };
    let took = started.elapsed();
    eprintln!("amqps on the plain port, after {took:?}: {text}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
    assert!(text.contains("TLS handshake"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[test]
fn a_bad_cacertfile_is_a_url_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (url, want) in [
        (
            format!(
                "amqps://u:s3cret-pw@localhost:1/%2f?cacertfile={}",
                dir.path().join("missing.pem").display()
            ),
            "cannot read it",
        ),
        (
            format!(
                "amqps://u:s3cret-pw@localhost:1/%2f?cacertfile={}",
                not_pem.display()
            ),
            "no PEM certificate",
        ),
        (
            format!(
                "amqp://u:s3cret-pw@localhost:1/%2f?cacertfile={}",
                not_pem.display()
            ),
            "needs an `amqps://` URL",
        ),
    ] {
        let text = match rt.block_on(AmqpBroker::open(&url)) {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        };
        assert!(text.contains(want), "{url}: {text}");
        assert!(text.contains("cacertfile"), "{url}: {text}");
        assert!(!text.contains("s3cret-pw"), "{url}: {text}");
    }
}
