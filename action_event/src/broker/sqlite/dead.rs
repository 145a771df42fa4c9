//! Dead letters: the `dead_events` table, and moving events in and out of it.

use rusqlite::{Connection, TransactionBehavior, params};

use super::conn::Inner;
use super::publish::INSERT;
use super::settle::{ACK, warn_lapsed};
use super::{SqliteBroker, ms_i64, text};
use crate::Error;
use crate::broker::{DeadEvent, DeadFilter, Delivery};
use crate::envelope::{AttemptError, Envelope, now_ms};

const DEAD_WHERE: &str = "(?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR name = ?2) \
     AND (?3 IS NULL OR died_at < ?3)";

/// A dead row as stored.
struct DeadRow {
    rowid: i64,
    event: DeadEvent,
}

fn dead_rows(
    conn: &Connection,
    inner: &Inner,
    id: Option<&str>,
    filter: &DeadFilter,
) -> Result<Vec<DeadRow>, Error> {
    let sql_filter = format!(
        "SELECT id, event_id, name, queue, body, attempts, errors, reason, died_at \
         FROM dead_events WHERE {DEAD_WHERE} ORDER BY died_at, id"
    );
    const SQL_ID: &str = "SELECT id, event_id, name, queue, body, attempts, errors, reason, died_at \
         FROM dead_events WHERE event_id = ?1 ORDER BY died_at, id";
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<DeadRow> {
        let errors: Option<String> = r.get(6)?;
        let event_id: Option<String> = r.get(1)?;
        let errors = match errors.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => serde_json::from_str::<Vec<AttemptError>>(json).unwrap_or_else(|e| {
                tracing::warn!(
                    broker = %inner.url,
                    "dead event {}: its stored errors are not readable: {e}",
                    event_id.as_deref().unwrap_or("?")
                );
                Vec::new()
            }),
        };
        Ok(DeadRow {
            rowid: r.get(0)?,
            event: DeadEvent {
                id: event_id.unwrap_or_default(),
                name: r.get(2)?,
                queue: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                body: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                attempts: u32::try_from(r.get::<_, Option<i64>>(5)?.unwrap_or(0)).unwrap_or(0),
                errors,
                reason: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                died_at_ms: u64::try_from(r.get::<_, Option<i64>>(8)?.unwrap_or(0)).unwrap_or(0),
            },
        })
    };
    let rows = match id {
        Some(id) => {
            let mut stmt = conn
                .prepare_cached(SQL_ID)
                .map_err(|e| inner.err("dead events", e))?;
            let rows = stmt
                .query_map([id], read)
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| inner.err("dead events", e))?;
            if rows.is_empty() {
                return Err(Error::NoSuchDeadEvent(id.to_string()));
            }
            rows
        }
        None => {
            let mut stmt = conn
                .prepare_cached(&sql_filter)
                .map_err(|e| inner.err("dead events", e))?;
            stmt.query_map(
                params![
                    filter.queue,
                    filter.event,
                    filter.died_before_ms.map(ms_i64)
                ],
                read,
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| inner.err("dead events", e))?
        }
    };
    Ok(rows)
}

/// Moves the delivery to the dead letters (see
/// [`Broker::dead`](crate::broker::Broker::dead)).
pub(super) async fn dead(
    broker: &SqliteBroker,
    delivery: &Delivery,
    dead: &DeadEvent,
) -> Result<(), Error> {
    let tag = broker.tag(delivery)?;
    let (row, claim, event_id) = (tag.row, tag.claim.clone(), tag.event_id.clone());
    let dead = dead.clone();
    let errors = serde_json::to_string(&dead.errors)
        .map_err(|e| Error::broker(&broker.inner.url, format!("dead: errors: {e}")))?;
    broker.run(move |inner, state| {
        // Forgotten whatever happens next: see `settle`.
        state.held.remove(&(row, claim.clone()));
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| inner.err("dead: begin", e))?;
        let n = tx
            .prepare_cached(ACK)
            .and_then(|mut s| s.execute(params![row, claim]))
            .map_err(|e| inner.err("dead", e))?;
        if n == 0 {
            drop(tx);
            warn_lapsed(&inner.url, &event_id, "dead-lettering");
            return Ok(());
        }
        let id = if dead.id.is_empty() {
            &event_id
        } else {
            &dead.id
        };
        tx.execute(
            "INSERT INTO dead_events (event_id, name, queue, body, attempts, errors, reason, died_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                dead.name,
                dead.queue,
                dead.body,
                i64::from(dead.attempts),
                errors,
                dead.reason,
                ms_i64(dead.died_at_ms)
            ],
        )
        .map_err(|e| inner.err("dead", e))?;
        tx.commit().map_err(|e| inner.err("dead: commit", e))?;
        Ok(())
    })
    .await
}

/// Dead events matching `filter`, oldest first.
pub(super) async fn dead_list(
    broker: &SqliteBroker,
    filter: &DeadFilter,
) -> Result<Vec<DeadEvent>, Error> {
    let filter = filter.clone();
    broker
        .run(move |inner, state| {
            Ok(dead_rows(&state.conn, inner, None, &filter)?
                .into_iter()
                .map(|r| r.event)
                .collect())
        })
        .await
}

/// Puts dead events back on their queues (see
/// [`Broker::dead_retry`](crate::broker::Broker::dead_retry)).
pub(super) async fn dead_retry(
    broker: &SqliteBroker,
    id: Option<&str>,
    filter: &DeadFilter,
) -> Result<u64, Error> {
    let id = id.map(str::to_string);
    let filter = filter.clone();
    broker
        .run(move |inner, state| {
            let tx = state
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| inner.err("dead retry: begin", e))?;
            let rows = dead_rows(&tx, inner, id.as_deref(), &filter)?;
            let now = now_ms();
            let mut count = 0;
            for row in rows {
                let dead = &row.event;
                let env = match Envelope::from_slice(dead.body.as_bytes()) {
                    Ok(env) => env,
                    Err(e) => {
                        tracing::warn!(
                            broker = %inner.url,
                            event_id = %dead.id,
                            "dead event {}: not retried, its body is not a valid envelope ({e}); \
                             it stays in the dead letters",
                            dead.id
                        );
                        continue;
                    }
                };
                let fresh = Envelope {
                    attempt: 1,
                    errors: Vec::new(),
                    run_at_ms: None,
                    queued_at_ms: now,
                    ..env
                };
                let n = tx
                    .prepare_cached(INSERT)
                    .and_then(|mut s| {
                        s.execute(params![
                            fresh.id.to_string(),
                            fresh.queue,
                            fresh.name,
                            text(fresh.to_bytes()),
                            ms_i64(now),
                            ms_i64(now)
                        ])
                    })
                    .map_err(|e| inner.err("dead retry", e))?;
                if n == 0 {
                    tracing::warn!(
                        broker = %inner.url,
                        event_id = %fresh.id,
                        "dead event {}: not retried, an event with this id is already queued; \
                         it stays in the dead letters",
                        fresh.id
                    );
                    continue;
                }
                tx.execute("DELETE FROM dead_events WHERE id = ?1", [row.rowid])
                    .map_err(|e| inner.err("dead retry", e))?;
                count += 1;
            }
            tx.commit()
                .map_err(|e| inner.err("dead retry: commit", e))?;
            Ok(count)
        })
        .await
}

/// Deletes dead events; `id` `None` means every one matching `filter`.
pub(super) async fn dead_purge(
    broker: &SqliteBroker,
    id: Option<&str>,
    filter: &DeadFilter,
) -> Result<u64, Error> {
    let id = id.map(str::to_string);
    let filter = filter.clone();
    broker
        .run(move |inner, state| {
            let n = match &id {
                Some(id) => {
                    let n = state
                        .conn
                        .execute("DELETE FROM dead_events WHERE event_id = ?1", [id])
                        .map_err(|e| inner.err("dead purge", e))?;
                    if n == 0 {
                        return Err(Error::NoSuchDeadEvent(id.clone()));
                    }
                    n
                }
                None => state
                    .conn
                    .execute(
                        &format!("DELETE FROM dead_events WHERE {DEAD_WHERE}"),
                        params![
                            filter.queue,
                            filter.event,
                            filter.died_before_ms.map(ms_i64)
                        ],
                    )
                    .map_err(|e| inner.err("dead purge", e))?,
            };
            Ok(n as u64)
        })
        .await
}
