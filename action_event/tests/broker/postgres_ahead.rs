//! PostgreSQL's batch claim: events claimed ahead of `take` keep strict
//! priority at hand-out, and go back as they were.

use std::time::Duration;

use action_event::Envelope;
use action_event::broker::Broker;
use serde_json::json;

use crate::test_support::*;

/// How many events of `queue` are claimed (handed out or held ahead).
async fn claimed(b: &action_event::broker::postgres::PostgresBroker, queue: &str) -> i64 {
    action_event::sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.events WHERE queue = $1 AND claim IS NOT NULL",
        b.schema()
    ))
    .bind(queue)
    .fetch_one(b.pool())
    .await
    .expect("count")
}

/// One take claims a batch of `medium` (one handed out, the others held
/// ahead). A `high` event queued after that (by this broker, then by
/// another) goes first: a held `medium` event does not start while a
/// `high` one is ready. `give_back` returns
/// the held ones as they were: not redelivered, in their order, to another
/// broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_high_event_goes_before_medium_events_held_ahead() {
    let schema = new_schema();
    let Some(a) = open_postgres(&schema, "&batch=5").await else {
        return;
    };
    let medium: Vec<_> = (0..10)
        .map(|n| Envelope::new("e", "medium", json!({ "n": n })))
        .collect();
    a.publish_many(&medium).await.expect("publish");
    let q = qs(&["high", "medium"]);
    let wait = Duration::from_secs(5);
    let first = a.take(&q, wait).await.expect("take").expect("event");
    assert_eq!(env_of(&first).id, medium[0].id);
    assert_eq!(
        claimed(&a, "medium").await,
        5,
        "a batch of 5: 1 in hand, 4 ahead"
    );

    let high = Envelope::new("e", "high", json!({}));
    a.publish(&high).await.expect("publish");
    let second = a.take(&q, wait).await.expect("take").expect("event");
    assert_eq!(
        second.queue, "high",
        "the ready high event, not a held medium one"
    );
    assert_eq!(env_of(&second).id, high.id);
    let third = a.take(&q, wait).await.expect("take").expect("event");
    assert_eq!(
        env_of(&third).id,
        medium[1].id,
        "then the held ones, in order"
    );
    // The same with a `high` event queued by another broker (another
    // process): `a` learns of it by its `NOTIFY` (on localhost within
    // milliseconds; 500 ms allowed), not by a read before each hand-out.
    let c = open_postgres(&schema, "").await.expect("publishing broker");
    let other = Envelope::new("e", "high", json!({ "from": "c" }));
    c.publish(&other).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fourth = a.take(&q, wait).await.expect("take").expect("event");
    assert_eq!(
        env_of(&fourth).id,
        other.id,
        "the other broker's high event first"
    );
    let fifth = a.take(&q, wait).await.expect("take").expect("event");
    assert_eq!(
        env_of(&fifth).id,
        medium[2].id,
        "then the held ones, in order"
    );
    for d in [&first, &second, &third, &fourth, &fifth] {
        a.ack(d).await.expect("ack");
    }

    a.give_back().await.expect("give back");
    assert_eq!(claimed(&a, "medium").await, 0, "the 2 held ahead went back");
    let b = open_postgres(&schema, "").await.expect("second broker");
    let mut got = Vec::new();
    while let Some(d) = b.take(&q, Duration::from_millis(200)).await.expect("take") {
        assert!(!d.redelivered, "given back untouched: not a redelivery");
        got.push(env_of(&d).id);
        b.ack(&d).await.expect("ack");
    }
    let want: Vec<_> = medium[3..].iter().map(|e| e.id).collect();
    assert_eq!(got, want, "the 7 others, in order, once each");
    drop_schema(b.pool(), &schema).await;
}

/// Events held ahead that nobody takes go back within about two seconds
/// (held at most 1 s, looked for every second), not after their lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_held_ahead_and_not_taken_go_back_by_themselves() {
    let schema = new_schema();
    let Some(a) = open_postgres(&schema, "&batch=4&lease=1m").await else {
        return;
    };
    let envs: Vec<_> = (0..4)
        .map(|n| Envelope::new("e", "low", json!({ "n": n })))
        .collect();
    a.publish_many(&envs).await.expect("publish");
    let d = a
        .take(&qs(&["low"]), Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");
    assert_eq!(claimed(&a, "low").await, 4);
    let started = std::time::Instant::now();
    loop {
        let waiting = a.depth("low").await.expect("depth").waiting;
        if waiting == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{waiting} of 3 events held ahead are back after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(claimed(&a, "low").await, 1, "the one in hand stays claimed");
    a.ack(&d).await.expect("ack");
    drop_schema(a.pool(), &schema).await;
}
