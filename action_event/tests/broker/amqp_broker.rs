//! What only the RabbitMQ backend does, against a real broker
//! (`ACTION_EVENT_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`):
//! prefetch, queues declared elsewhere with other arguments, buffered events
//! given back while those in hand stay. What every backend does is in
//! `contract` (`contract::amqp::*`).
//!
//! Each test uses its own random prefix and deletes its queues at the end.
//! Without a reachable broker every test prints `SKIPPED: ...` and passes,
//! unless `ACTION_EVENT_REQUIRE_AMQP=1`. Tests that cut connections or stop
//! the broker are in `amqp_private_node`, on a broker node of their own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use action_event::Envelope;
use action_event::broker::Broker;
use action_event::broker::amqp::AmqpBroker;

use crate::contract::{assert_strict, drain_in_order};
use crate::test_support::{amqp_base_url as base_url, env_of as parse, new_prefix, publish_all};

async fn open(prefix: &str, extra: &str) -> Option<AmqpBroker> {
    crate::test_support::open_amqp(prefix, extra).await
}

fn env(queue: &str, n: usize) -> Envelope {
    Envelope::new("test_event", queue, serde_json::json!({ "n": n }))
}

/// The URL a broker shows hides the password.
#[tokio::test]
async fn url_hides_the_password() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    assert!(
        !b.url().contains("guest:guest"),
        "password redacted: {}",
        b.url()
    );
    b.close().await;
}

#[tokio::test]
async fn strict_priority_two_brokers() {
    let prefix = new_prefix();
    // prefetch at or below the slots per poller: see the module docs.
    let Some(a) = open(&prefix, "&prefetch=8").await else {
        return;
    };
    let Some(b) = open(&prefix, "&prefetch=8").await else {
        return;
    };
    let mut envs = Vec::new();
    for q in ["low", "medium", "high"] {
        for n in 0..300 {
            envs.push(env(q, n));
        }
    }
    publish_all(&a, &envs).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let order = drain_in_order(
        vec![a.clone(), b.clone()],
        &["high", "medium", "low"],
        12,
        900,
    )
    .await;
    assert_eq!(order.len(), 900);
    assert_strict(&order, &["high", "medium", "low"]);
    a.delete_topology().await.expect("cleanup");
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test]
async fn queue_with_other_arguments_is_a_clear_error() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "").await else {
        return;
    };
    let conn = lapin::Connection::connect(&base_url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let ch = conn.create_channel().await.expect("channel");
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-max-priority".into(),
        lapin::types::AMQPValue::ShortShortUInt(5),
    );
    let name = format!("{prefix}jobs");
    ch.queue_declare(
        name.as_str().into(),
        lapin::options::QueueDeclareOptions::durable(),
        args,
    )
    .await
    .expect("declare foreign queue");
    let err = b.publish(&env("jobs", 1)).await.expect_err("mismatch");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains(&name), "names the queue: {text}");
    assert!(
        text.contains("x-max-priority"),
        "names the argument: {text}"
    );
    assert!(!text.contains("guest:guest"), "redacted: {text}");
    let err = b
        .take(&["jobs".to_string()], Duration::from_secs(1))
        .await
        .expect_err("mismatch");
    assert!(err.to_string().contains("x-max-priority"), "{err}");
    ch.queue_delete(
        name.as_str().into(),
        lapin::options::QueueDeleteOptions::default(),
    )
    .await
    .expect("delete");
    let _ = conn.close(200, "OK".into()).await;
    b.delete_topology().await.expect("cleanup");
}

/// A poller whose slots are all busy with long events takes nothing for a
/// while: the events it buffered go back to the broker after 5 s, but the
/// ones it is running stay its own (their channel stays open), so none of
/// them is delivered again.
#[tokio::test]
async fn events_in_hand_stay_when_buffered_ones_go_back() {
    let prefix = new_prefix();
    let Some(b) = open(&prefix, "&prefetch=8").await else {
        return;
    };
    let envs: Vec<Envelope> = (0..10).map(|n| env("busy", n)).collect();
    publish_all(&b, &envs).await;
    let q = vec!["busy".to_string()];
    let mut in_hand = Vec::new();
    for _ in 0..2 {
        in_hand.push(
            b.take(&q, Duration::from_secs(5))
                .await
                .expect("take")
                .expect("event"),
        );
    }
    // No take for 8 s: longer than the 5 s after which buffered events go back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut seen: HashMap<String, (usize, bool)> = HashMap::new();
    for d in &in_hand {
        seen.insert(parse(d).id.to_string(), (1, d.redelivered));
        b.ack(d).await.expect("ack");
    }
    while let Some(d) = b.take(&q, Duration::from_secs(3)).await.expect("take") {
        let e = seen.entry(parse(&d).id.to_string()).or_insert((0, false));
        e.0 += 1;
        b.ack(&d).await.expect("ack");
    }
    assert_eq!(seen.len(), 10, "every event came: {seen:?}");
    assert!(
        seen.values().all(|(n, _)| *n == 1),
        "each exactly once (the two in hand not again): {seen:?}"
    );
    b.delete_topology().await.expect("cleanup");
}
