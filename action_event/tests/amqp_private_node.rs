//! The RabbitMQ backend against a private broker node of its own
//! (`support/rabbit_node.rs`): tests that restart the broker or change its
//! configuration, without disturbing the shared broker on 5672.
//!
//! Without `rabbitmq-server` installed each test prints `SKIPPED: ...` and
//! passes, unless `ACTION_EVENT_REQUIRE_AMQP=1`.

#[path = "support/rabbit_node.rs"]
mod rabbit_node;

use std::collections::HashSet;
use std::time::Duration;

use action_event::Envelope;
use action_event::broker::Broker;
use action_event::broker::amqp::AmqpBroker;
use rabbit_node::RabbitNode;

/// A private node, or `None` after a loud message when none can be started
/// and `ACTION_EVENT_REQUIRE_AMQP` is not `1`.
fn node(conf: &str) -> Option<RabbitNode> {
    if !rabbit_node::available() {
        if std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() == Ok("1") {
            panic!("rabbitmq-server is not installed but ACTION_EVENT_REQUIRE_AMQP=1");
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: no RabbitMQ: rabbitmq-server is not installed, no private node ***\n"
        );
        return None;
    }
    Some(RabbitNode::start(conf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_events_survive_a_broker_restart() {
    let Some(node) = node("") else { return };
    let url = format!("{}?prefix=restart.", node.url());
    let b = AmqpBroker::open(&url).await.expect("open");
    for n in 0..100 {
        b.publish(&Envelope::new("t", "work", serde_json::json!({ "n": n })))
            .await
            .expect("publish");
    }
    b.close().await;
    let stopper = tokio::task::spawn_blocking(move || {
        node.stop_app();
        node.start_app();
        node
    });
    let node = stopper.await.expect("restart");
    assert_eq!(node.ready("restart.work"), Some(100), "{}", node.log());

    let b = AmqpBroker::open(&url).await.expect("open after restart");
    let mut seen = HashSet::new();
    while let Some(d) = b
        .take(&["work".to_string()], Duration::from_secs(3))
        .await
        .expect("take")
    {
        let env = Envelope::from_slice(&d.body).expect("an envelope");
        seen.insert(env.params["n"].as_u64().expect("n"));
        b.ack(&d).await.expect("ack");
        if seen.len() == 100 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        100,
        "every confirmed event is back after the restart"
    );
    b.close().await;
}
