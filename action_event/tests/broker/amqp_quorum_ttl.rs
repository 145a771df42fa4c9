//! Delayed events carry their level's TTL as their own `expiration`
//! (`amqp/wire.rs`, `expiring_properties`: RabbitMQ 3.10.8 may apply a new
//! quorum level's `x-message-ttl` too late for the first messages, which
//! then never expire; `tests/e2e/cluster_ttl_e2e.rs` shows it on a
//! cluster). That is safe only because RabbitMQ removes `expiration` when
//! it dead-letters the message: a work queue has no dead-letter exchange,
//! so an event that still carried it would be dropped there unseen.

use std::time::Duration;

use action_event::broker::Broker;
use action_event::envelope::{Envelope, now_ms};

use crate::test_support::*;

/// A delayed event that reached its work queue stays there past its level's
/// TTL: it does not carry the level's `expiration` any more.
async fn stays_in_its_work_queue(queue_type: &str) {
    let prefix = new_prefix();
    let Some(b) = open_amqp(&prefix, &format!("&queue_type={queue_type}")).await else {
        return;
    };
    // 500 ms: a level of its own (`delay.500`), so the event arrives due.
    let mut e = Envelope::new("ttl_probe", "jobs", serde_json::json!({}));
    e.run_at_ms = Some(now_ms() + 500);
    b.publish(&e).await.expect("publish delayed");
    let t = std::time::Instant::now();
    while b.depth("jobs").await.expect("depth").waiting == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the delayed event never arrived ({queue_type})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Four times the level's TTL in the work queue.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(
        b.depth("jobs").await.expect("depth").waiting,
        1,
        "the delayed event expired in its work queue ({queue_type})"
    );
    let d = b
        .take(&qs(&["jobs"]), Duration::from_secs(2))
        .await
        .expect("take")
        .expect("the event is there");
    assert_eq!(env_of(&d).id, e.id);
    b.ack(&d).await.expect("ack");
    b.delete_topology().await.expect("cleanup");
}

#[tokio::test]
async fn a_delayed_event_keeps_no_expiration_in_a_classic_work_queue() {
    stays_in_its_work_queue("classic").await;
}

#[tokio::test]
async fn a_delayed_event_keeps_no_expiration_in_a_quorum_work_queue() {
    stays_in_its_work_queue("quorum").await;
}
