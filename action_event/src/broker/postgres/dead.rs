//! Dead letters: the `dead_events` table, and moving events in and out of it.

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::claim::Tag;
use super::publish::insert_on;
use super::settle::warn_lapsed;
use super::{Inner, ms_i64};
use crate::Error;
use crate::broker::{DeadEvent, DeadFilter};
use crate::envelope::{AttemptError, Envelope, now_ms};

const COLUMNS: &str = "id, event_id, name, queue, body, attempts, errors, reason, died_at";

/// `$1` queue, `$2` name, `$3` died before: each `NULL` for any.
const WHERE_FILTER: &str = "($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR name = $2) \
     AND ($3::bigint IS NULL OR died_at < $3)";

fn read(inner: &Inner, r: &PgRow) -> Result<(i64, DeadEvent), sqlx::Error> {
    let event_id: String = r.try_get(1)?;
    let errors: String = r.try_get(6)?;
    let errors = if errors.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str::<Vec<AttemptError>>(&errors).unwrap_or_else(|e| {
            tracing::warn!(broker = %inner.url, "dead event {event_id}: its stored errors are not readable: {e}");
            Vec::new()
        })
    };
    Ok((
        r.try_get(0)?,
        DeadEvent {
            id: event_id,
            name: r.try_get(2)?,
            queue: r.try_get(3)?,
            body: r.try_get(4)?,
            attempts: u32::try_from(r.try_get::<i32, _>(5)?).unwrap_or(0),
            errors,
            reason: r.try_get(7)?,
            died_at_ms: u64::try_from(r.try_get::<i64, _>(8)?).unwrap_or(0),
        },
    ))
}

async fn dead_rows(
    conn: &mut sqlx::PgConnection,
    inner: &Inner,
    id: Option<&str>,
    filter: &DeadFilter,
    lock: bool,
) -> Result<Vec<(i64, DeadEvent)>, Error> {
    let s = &inner.cfg.schema;
    let lock = if lock { " FOR UPDATE" } else { "" };
    let rows = match id {
        Some(id) => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM {s}.dead_events WHERE event_id = $1 ORDER BY died_at, id{lock}"
            ))
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| inner.err("dead events", e))?;
            if rows.is_empty() {
                return Err(Error::NoSuchDeadEvent(id.to_string()));
            }
            rows
        }
        None => sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {s}.dead_events WHERE {WHERE_FILTER} ORDER BY died_at, id{lock}"
        ))
        .bind(filter.queue.as_deref())
        .bind(filter.event.as_deref())
        .bind(filter.died_before_ms.map(ms_i64))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| inner.err("dead events", e))?,
    };
    rows.iter()
        .map(|r| read(inner, r).map_err(|e| inner.err("dead events", e)))
        .collect()
}

/// Moves the delivery to the dead letters, in one transaction (see
/// [`Broker::dead`](crate::broker::Broker::dead)).
pub(super) async fn dead(inner: &Inner, tag: &Tag, dead: &DeadEvent) -> Result<(), Error> {
    inner.held().remove(&tag.row);
    let errors = serde_json::to_string(&dead.errors)
        .map_err(|e| Error::broker(&inner.url, format!("dead: errors: {e}")))?;
    let mut tx = inner
        .pool
        .begin()
        .await
        .map_err(|e| inner.err("dead: begin", e))?;
    let n = sqlx::query(&inner.sql.ack)
        .bind(tag.row)
        .bind(tag.claim)
        .execute(&mut *tx)
        .await
        .map_err(|e| inner.err("dead", e))?
        .rows_affected();
    if n == 0 {
        drop(tx);
        warn_lapsed(&inner.url, &tag.event_id, "dead-lettering");
        return Ok(());
    }
    let id = if dead.id.is_empty() {
        &tag.event_id
    } else {
        &dead.id
    };
    sqlx::query(&format!(
        "INSERT INTO {}.dead_events (event_id, name, queue, body, attempts, errors, reason, died_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        inner.cfg.schema
    ))
    .bind(id)
    .bind(dead.name.as_deref())
    .bind(&dead.queue)
    .bind(&dead.body)
    .bind(i32::try_from(dead.attempts).unwrap_or(i32::MAX))
    .bind(errors)
    .bind(&dead.reason)
    .bind(ms_i64(dead.died_at_ms))
    .execute(&mut *tx)
    .await
    .map_err(|e| inner.err("dead", e))?;
    tx.commit().await.map_err(|e| inner.err("dead: commit", e))
}

/// Dead events matching `filter`, oldest first.
pub(super) async fn dead_list(inner: &Inner, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error> {
    let mut conn = inner
        .pool
        .acquire()
        .await
        .map_err(|e| inner.err("dead events", e))?;
    Ok(dead_rows(&mut conn, inner, None, filter, false)
        .await?
        .into_iter()
        .map(|(_, d)| d)
        .collect())
}

/// Puts dead events back on their queues, in one transaction (see
/// [`Broker::dead_retry`](crate::broker::Broker::dead_retry)).
pub(super) async fn dead_retry(
    inner: &Inner,
    id: Option<&str>,
    filter: &DeadFilter,
) -> Result<u64, Error> {
    let mut tx = inner
        .pool
        .begin()
        .await
        .map_err(|e| inner.err("dead retry: begin", e))?;
    let rows = dead_rows(&mut tx, inner, id, filter, true).await?;
    let now = now_ms();
    let mut count = 0;
    for (rowid, dead) in rows {
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
        let n = insert_on(&mut tx, &inner.sql.insert, std::slice::from_ref(&fresh))
            .await
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
        sqlx::query(&format!(
            "DELETE FROM {}.dead_events WHERE id = $1",
            inner.cfg.schema
        ))
        .bind(rowid)
        .execute(&mut *tx)
        .await
        .map_err(|e| inner.err("dead retry", e))?;
        count += 1;
    }
    tx.commit()
        .await
        .map_err(|e| inner.err("dead retry: commit", e))?;
    Ok(count)
}

/// Deletes dead events; `id` `None` means every one matching `filter`.
pub(super) async fn dead_purge(
    inner: &Inner,
    id: Option<&str>,
    filter: &DeadFilter,
) -> Result<u64, Error> {
    let s = &inner.cfg.schema;
    let n = match id {
        Some(id) => {
            let n = sqlx::query(&format!("DELETE FROM {s}.dead_events WHERE event_id = $1"))
                .bind(id)
                .execute(&inner.pool)
                .await
                .map_err(|e| inner.err("dead purge", e))?
                .rows_affected();
            if n == 0 {
                return Err(Error::NoSuchDeadEvent(id.to_string()));
            }
            n
        }
        None => sqlx::query(&format!("DELETE FROM {s}.dead_events WHERE {WHERE_FILTER}"))
            .bind(filter.queue.as_deref())
            .bind(filter.event.as_deref())
            .bind(filter.died_before_ms.map(ms_i64))
            .execute(&inner.pool)
            .await
            .map_err(|e| inner.err("dead purge", e))?
            .rows_affected(),
    };
    Ok(n)
}
