//! Counting a queue ([`Broker::depth`](crate::broker::Broker::depth)) and
//! listing the events not due yet (the dashboard's Scheduled page).

use std::time::Duration;

use super::{Inner, now_i64, owner};
use crate::Error;
use crate::broker::{QueueDepth, ScheduledEvent};

/// Ready and scheduled events of `queue`; events in hand count as neither,
/// except those of a poller that is gone: they are made ready first
/// ([`super::owner`]) and count as waiting.
pub(super) async fn depth(inner: &Inner, queue: &str) -> Result<QueueDepth, Error> {
    owner::reclaim_gone(inner).await?;
    let now = now_i64();
    let (waiting, scheduled, oldest): (i64, i64, Option<i64>) = sqlx::query_as(&inner.sql.depth)
        .bind(queue)
        .bind(now)
        .fetch_one(&inner.pool)
        .await
        .map_err(|e| inner.err("depth", e))?;
    Ok(QueueDepth {
        waiting: u64::try_from(waiting).unwrap_or(0),
        scheduled: Some(u64::try_from(scheduled).unwrap_or(0)),
        oldest_age: oldest
            .map(|q| Duration::from_millis(u64::try_from(now.saturating_sub(q)).unwrap_or(0))),
    })
}

/// Every queue with a row (ready, delayed or taken), found with one index
/// probe per queue (a loose index scan), not a scan of every event.
pub(super) async fn queues_with_events(inner: &Inner) -> Result<Option<Vec<String>>, Error> {
    let s = &inner.cfg.schema;
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "WITH RECURSIVE q AS ( \
           (SELECT queue FROM {s}.events ORDER BY queue LIMIT 1) \
           UNION ALL \
           SELECT (SELECT e.queue FROM {s}.events e WHERE e.queue > q.queue ORDER BY e.queue LIMIT 1) \
           FROM q WHERE q.queue IS NOT NULL) \
         SELECT queue FROM q WHERE queue IS NOT NULL"
    ))
    .fetch_all(&inner.pool)
    .await
    .map_err(|e| inner.err("list queues", e))?;
    Ok(Some(rows))
}

/// `$1` now, `$2` limit: read in order from the index `events_scheduled`
/// (schema version 4), which holds only rows not claimed.
fn scheduled_sql(schema: &str) -> String {
    format!(
        "SELECT event_id, name, queue, body, visible_at FROM {schema}.events \
         WHERE visible_at > $1 AND claim IS NULL ORDER BY visible_at, id LIMIT $2"
    )
}

/// Up to `limit` events not due yet and not held (delayed, or waiting for
/// a retry), soonest first:
/// [`Broker::scheduled_list`](crate::broker::Broker::scheduled_list).
pub(super) async fn scheduled_list(
    inner: &Inner,
    limit: usize,
) -> Result<Option<Vec<ScheduledEvent>>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<(String, Option<String>, String, String, i64)> =
        sqlx::query_as(&scheduled_sql(&inner.cfg.schema))
            .bind(now_i64())
            .bind(limit)
            .fetch_all(&inner.pool)
            .await
            .map_err(|e| inner.err("list scheduled events", e))?;
    Ok(Some(
        rows.into_iter()
            .map(|(id, name, queue, body, due)| {
                let attempt = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("attempt").and_then(|a| a.as_u64()))
                    .and_then(|a| u32::try_from(a).ok())
                    .unwrap_or(1);
                ScheduledEvent {
                    id,
                    name,
                    queue,
                    attempt,
                    due_at_ms: u64::try_from(due).unwrap_or(0),
                    body,
                }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use crate::broker::Broker;
    use crate::broker::postgres::PostgresBroker;

    /// The Scheduled page's query reads the index `events_scheduled` in
    /// order (no sort of the table), with 20,000 events, half not due yet.
    #[tokio::test]
    async fn postgres_scheduled_list_reads_its_index() {
        let base = std::env::var("ACTION_EVENT_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("test_{}", uuid::Uuid::now_v7().simple());
        let broker = match PostgresBroker::open(&format!("{base}?schema={schema}")).await {
            Ok(b) => b,
            Err(e) if std::env::var("ACTION_EVENT_REQUIRE_POSTGRES").as_deref() != Ok("1") => {
                eprintln!("*** SKIPPED: no PostgreSQL at {base}: {e} ***");
                return;
            }
            Err(e) => panic!("no PostgreSQL at {base}: {e}"),
        };
        let later = crate::envelope::now_ms() + 3_600_000;
        let envs: Vec<Envelope> = (0..20_000u64)
            .map(|i| {
                let mut e = Envelope::new("e", "low", serde_json::json!({ "i": i }));
                if i % 2 == 0 {
                    e.run_at_ms = Some(later + i);
                }
                e
            })
            .collect();
        for chunk in envs.chunks(5_000) {
            broker.publish_many(chunk).await.expect("publish");
        }
        sqlx::query(&format!("ANALYZE {schema}.events"))
            .execute(broker.pool())
            .await
            .expect("analyze");
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN {}",
            scheduled_sql(&schema)
                .replace("$1", &now_i64().to_string())
                .replace("$2", "50")
        ))
        .fetch_all(broker.pool())
        .await
        .expect("explain");
        let plan = plan.join("\n");
        let listed = broker
            .scheduled_list(50)
            .await
            .expect("list")
            .expect("some");
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(broker.pool())
            .await
            .expect("drop");
        assert!(plan.contains("events_scheduled"), "{plan}");
        assert!(!plan.contains("Sort"), "{plan}");
        assert_eq!(listed.len(), 50);
        assert_eq!(listed[0].due_at_ms, later);
    }
}
