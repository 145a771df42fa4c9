//! Counting a queue: [`Broker::depth`](crate::broker::Broker::depth).

use std::time::Duration;

use super::{Inner, now_i64, owner};
use crate::Error;
use crate::broker::QueueDepth;

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
