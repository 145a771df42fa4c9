//! What only the PostgreSQL backend has (the rest is in `contract`):
//! periodic ticks claimed by racing brokers.

use std::sync::Arc;

use action_event::Envelope;
use action_event::broker::Broker;
use action_event::periodic::{TickClaim, tick_id};
use serde_json::json;

use crate::test_support::*;

/// The number of rows of `events` with the id of `name`'s tick at `tick`.
async fn rows_with_tick_id(
    b: &action_event::broker::postgres::PostgresBroker,
    name: &str,
    tick: i64,
) -> i64 {
    action_event::sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.events WHERE event_id = $1",
        b.schema()
    ))
    .bind(tick_id(name, tick).to_string())
    .fetch_one(b.pool())
    .await
    .expect("count")
}

fn tick_claim(name: &str, expected: Option<i64>, tick: i64) -> TickClaim {
    let mut env = Envelope::new(name, "low", json!({}));
    env.id = tick_id(name, tick);
    TickClaim {
        name: name.to_string(),
        expected,
        tick,
        envelope: Some(env),
    }
}

/// Two brokers (two pollers) race for each tick, the first one (no last
/// tick yet: the insert) and the next ones (the compare-and-set): exactly
/// one wins each, and exactly one event exists with the tick's id. A claim
/// planned from a stale last tick loses; `tick_state`/`tick_last` report
/// the last tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_brokers_racing_for_a_tick_queue_it_once() {
    let schema = new_schema();
    let Some(a) = open_postgres(&schema, "").await else {
        return;
    };
    let b = open_postgres(&schema, "").await.expect("second broker");
    let (a, b) = (Arc::new(a), Arc::new(b));
    let name = "sweep";
    let start: i64 = 1_700_000_000_000;
    let mut expected = None;
    for round in 0..20 {
        let tick = start + round * 1_000;
        let claim = tick_claim(name, expected, tick);
        let (ca, cb) = (claim.clone(), claim);
        let (a2, b2) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move { a2.tick_claim(&ca).await });
        let tb = tokio::spawn(async move { b2.tick_claim(&cb).await });
        let wa = ta.await.expect("join").expect("claim a");
        let wb = tb.await.expect("join").expect("claim b");
        assert!(
            wa ^ wb,
            "round {round}: exactly one broker wins (a: {wa}, b: {wb})"
        );
        assert_eq!(rows_with_tick_id(&a, name, tick).await, 1, "round {round}");
        expected = Some(tick);
    }
    let last = start + 19 * 1_000;
    // Planned from a stale last tick: nothing queued, nothing recorded.
    let stale = tick_claim(name, Some(last - 1_000), last + 1_000);
    assert!(!a.tick_claim(&stale).await.expect("stale claim"));
    assert_eq!(rows_with_tick_id(&a, name, last + 1_000).await, 0);
    // The first tick again (no last tick expected): the row exists, it loses.
    assert!(
        !b.tick_claim(&tick_claim(name, None, last + 1_000))
            .await
            .expect("claim")
    );
    // A skip (no envelope) moves the last tick without an event.
    let skip = TickClaim {
        envelope: None,
        ..tick_claim(name, Some(last), last + 5_000)
    };
    assert!(a.tick_claim(&skip).await.expect("skip"));
    assert_eq!(rows_with_tick_id(&a, name, last + 5_000).await, 0);

    let state = b.tick_state().await.expect("state");
    assert!(state.holder);
    assert_eq!(state.last.get(name), Some(&(last + 5_000)));
    assert_eq!(
        b.tick_last().await.expect("last").get(name),
        Some(&(last + 5_000))
    );
    let events: i64 =
        action_event::sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.events"))
            .fetch_one(a.pool())
            .await
            .expect("count");
    assert_eq!(events, 20, "one event per tick claimed with an event");
    drop_schema(a.pool(), &schema).await;
}

/// `scheduled_list`: the events not due yet (delayed, or back for a retry
/// later), soonest first, up to the limit; not the ready ones, not the one
/// in hand (its lease is no schedule).
#[tokio::test]
async fn scheduled_list_shows_events_not_due_yet_soonest_first() {
    let schema = new_schema();
    let Some(b) = open_postgres(&schema, "").await else {
        return;
    };
    let now = action_event::envelope::now_ms();
    let mut delayed = Vec::new();
    for (i, secs) in [300u64, 100, 200].into_iter().enumerate() {
        let mut e = Envelope::new("later", "low", json!({ "i": i }));
        e.run_at_ms = Some(now + secs * 1_000);
        delayed.push(e);
    }
    publish_all(&b, &delayed).await;
    b.publish(&Envelope::new("now", "high", json!({})))
        .await
        .expect("publish");
    b.publish(&Envelope::new("held", "high", json!({})))
        .await
        .expect("publish");
    let first = b
        .take(&qs(&["high"]), std::time::Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");
    let mut retried = env_of(&first);
    retried.attempt += 1;
    b.retry(&first, &retried, std::time::Duration::from_secs(150))
        .await
        .expect("retry");
    let held = b
        .take(&qs(&["high"]), std::time::Duration::from_secs(5))
        .await
        .expect("take")
        .expect("event");

    let listed = b.scheduled_list(10).await.expect("list").expect("listed");
    let seen: Vec<(String, u32)> = listed.iter().map(|s| (s.id.clone(), s.attempt)).collect();
    assert_eq!(
        seen,
        vec![
            (delayed[1].id.to_string(), 1),
            (retried.id.to_string(), 2),
            (delayed[2].id.to_string(), 1),
            (delayed[0].id.to_string(), 1),
        ],
        "soonest first; the ready and the held events are not listed"
    );
    assert_eq!(listed[0].name.as_deref(), Some("later"));
    assert_eq!(listed[0].queue, "low");
    assert_eq!(listed[0].due_at_ms, now + 100_000);
    assert!(listed[0].body.contains("\"i\":1"), "{}", listed[0].body);
    let two = b.scheduled_list(2).await.expect("list").expect("listed");
    assert_eq!(two.len(), 2, "the limit");
    assert_eq!(two[0].id, listed[0].id);
    b.ack(&held).await.expect("ack");
    drop_schema(b.pool(), &schema).await;
}

/// Publishing envelopes again (same ids, e.g. after an error) stores each
/// once: a batch with some ids already stored stores only the new ones.
#[tokio::test]
async fn publishing_the_same_ids_again_stores_each_once() {
    let schema = new_schema();
    let Some(b) = open_postgres(&schema, "").await else {
        return;
    };
    let envs: Vec<_> = (0..10)
        .map(|i| Envelope::new("e", "low", json!({ "i": i })))
        .collect();
    b.publish_many(&envs[..4]).await.expect("first part");
    b.publish(&envs[2]).await.expect("one again");
    b.publish_many(&envs).await.expect("all, 4 again");
    let n: i64 = action_event::sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.events"))
        .fetch_one(b.pool())
        .await
        .expect("count");
    assert_eq!(n, 10);
    drop_schema(b.pool(), &schema).await;
}
