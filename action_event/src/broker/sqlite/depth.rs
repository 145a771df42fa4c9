//! Counting a queue: [`Broker::depth`](crate::broker::Broker::depth).

use std::time::Duration;

use rusqlite::params;

use super::{SqliteBroker, now_i64, owner};
use crate::Error;
use crate::broker::QueueDepth;

/// `?1` queue, `?2` now.
pub(super) const DEPTH: &str = "SELECT COALESCE(SUM(visible_at <= ?2), 0), \
     COALESCE(SUM(visible_at > ?2 AND claim IS NULL), 0), \
     MIN(CASE WHEN visible_at <= ?2 THEN queued_at END) FROM events WHERE queue = ?1";

/// Ready and scheduled events of `queue`; events in hand or claimed ahead
/// count as neither, except those of a poller that is gone: they are made
/// ready first ([`super::owner`]) and count as waiting.
pub(super) async fn depth(broker: &SqliteBroker, queue: &str) -> Result<QueueDepth, Error> {
    let queue = queue.to_string();
    broker
        .run(move |inner, state| {
            let now = now_i64();
            // Events held by a poller that is gone are waiting: they come
            // back now (`--exit-when-empty` must not exit while they are owed).
            owner::reclaim_gone(&mut state.conn, now, &inner.url, &inner.cfg.path)?;
            let (waiting, scheduled, oldest): (i64, i64, Option<i64>) = state
                .conn
                .prepare_cached(DEPTH)
                .and_then(|mut s| {
                    s.query_row(params![queue, now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                })
                .map_err(|e| inner.err("depth", e))?;
            Ok(QueueDepth {
                waiting: u64::try_from(waiting).unwrap_or(0),
                scheduled: Some(u64::try_from(scheduled).unwrap_or(0)),
                oldest_age: oldest.map(|q| {
                    Duration::from_millis(u64::try_from(now.saturating_sub(q)).unwrap_or(0))
                }),
            })
        })
        .await
}

/// Every queue with a row (ready, delayed or taken):
/// [`Broker::queues_with_events`](crate::broker::Broker::queues_with_events).
pub(super) async fn queues_with_events(
    broker: &SqliteBroker,
) -> Result<Option<Vec<String>>, Error> {
    broker
        .run(|inner, state| {
            let mut stmt = state
                .conn
                .prepare_cached("SELECT DISTINCT queue FROM events ORDER BY queue")
                .map_err(|e| inner.err("list queues", e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| inner.err("list queues", e))?;
            Ok(Some(rows))
        })
        .await
}

/// Events not due yet and not held, soonest first:
/// [`Broker::scheduled_list`](crate::broker::Broker::scheduled_list).
pub(super) async fn scheduled_list(
    broker: &SqliteBroker,
    limit: usize,
) -> Result<Option<Vec<crate::broker::ScheduledEvent>>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    broker
        .run(move |inner, state| {
            let now = now_i64();
            let mut stmt = state
                .conn
                .prepare_cached(
                    "SELECT event_id, name, queue, body, visible_at FROM events \
                     WHERE visible_at > ?1 AND claim IS NULL ORDER BY visible_at LIMIT ?2",
                )
                .map_err(|e| inner.err("list scheduled events", e))?;
            let rows = stmt
                .query_map(params![now, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| inner.err("list scheduled events", e))?;
            Ok(Some(
                rows.into_iter()
                    .map(|(id, name, queue, body, due)| {
                        let attempt = serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v.get("attempt").and_then(|a| a.as_u64()))
                            .and_then(|a| u32::try_from(a).ok())
                            .unwrap_or(1);
                        crate::broker::ScheduledEvent {
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
        })
        .await
}
