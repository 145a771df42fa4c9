//! Publishing: one row per event, concurrent publishes committed together.

use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};

use super::conn::{Inner, State};
use super::{SqliteBroker, ms_i64, now_i64, text};
use crate::Error;
use crate::envelope::Envelope;

/// `?1` event id, `?2` queue, `?3` name, `?4` body, `?5` visible_at, `?6` queued_at.
pub(super) const INSERT: &str = "INSERT INTO events (event_id, queue, name, body, visible_at, queued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (event_id) DO NOTHING";

/// A row a publish stores.
pub(super) struct NewRow {
    /// Encoded (hyphenated, lower case) on a stack buffer when bound: no
    /// heap string per row.
    event_id: uuid::Uuid,
    /// Shared with the row before when equal (a batch is mostly one event
    /// on one queue): a reference count, not a copy, per row.
    queue: Arc<str>,
    name: Arc<str>,
    body: String,
    visible_at: i64,
    queued_at: i64,
}

/// Rows per multi-row INSERT, largest first: a batch goes in full
/// statements of the first size, its rest in the smaller ones. Each size's
/// statement is prepared once per connection and cached, and a row in a
/// 256-row statement costs a fraction of a one-row statement's step, reset
/// and change count (6 params a row: 1,536 variables, far under SQLite's
/// 32,766).
const ROWS_PER_INSERT: [usize; 3] = [256, 16, 1];

/// The INSERT of `rows` rows, same columns and conflict rule as [`INSERT`].
fn insert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(140 + rows * 34);
    sql.push_str("INSERT INTO events (event_id, queue, name, body, visible_at, queued_at) VALUES ");
    for r in 0..rows {
        let b = r * 6;
        if r > 0 {
            sql.push(',');
        }
        sql.push_str(&format!(
            "(?{},?{},?{},?{},?{},?{})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6
        ));
    }
    sql.push_str(" ON CONFLICT (event_id) DO NOTHING");
    sql
}

/// The SQL for each size of [`ROWS_PER_INSERT`], built once per process.
fn insert_sqls() -> &'static [String; 3] {
    static SQLS: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();
    SQLS.get_or_init(|| ROWS_PER_INSERT.map(insert_sql))
}

/// Stores `envelope` (see [`Broker::publish`](crate::broker::Broker::publish)).
/// Concurrent publishes are committed together (group commit): each
/// returns once the transaction holding its row committed.
pub(super) async fn publish(broker: &SqliteBroker, envelope: &Envelope) -> Result<(), Error> {
    publish_many(broker, std::slice::from_ref(envelope)).await
}

/// Stores every envelope in one transaction, all or none (see
/// [`Broker::publish_many`](crate::broker::Broker::publish_many)); it joins
/// the group commit of concurrent publishes like a single one.
pub(super) async fn publish_many(
    broker: &SqliteBroker,
    envelopes: &[Envelope],
) -> Result<(), Error> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let now = now_i64();
    let mut last: Option<(Arc<str>, Arc<str>)> = None;
    let rows = envelopes
        .iter()
        .map(|envelope| {
            let (queue, name) = match &last {
                Some((q, n)) if **q == *envelope.queue && **n == *envelope.name => {
                    (Arc::clone(q), Arc::clone(n))
                }
                _ => {
                    let fresh: (Arc<str>, Arc<str>) = (
                        envelope.queue.as_str().into(),
                        envelope.name.as_str().into(),
                    );
                    last = Some(fresh.clone());
                    fresh
                }
            };
            new_row(envelope, queue, name, now)
        })
        .collect();
    broker
        .group_commit(|inner| &inner.publishes, rows, insert_rows)
        .await
}

fn new_row(envelope: &Envelope, queue: Arc<str>, name: Arc<str>, now: i64) -> NewRow {
    NewRow {
        event_id: envelope.id.0,
        queue,
        name,
        body: text(envelope.to_bytes()),
        visible_at: envelope.run_at_ms.map(ms_i64).unwrap_or(now),
        queued_at: match envelope.queued_at_ms {
            0 => now,
            ms => ms_i64(ms),
        },
    }
}

/// Stores `batches` in one transaction (one autocommit insert for a single
/// row), in multi-row INSERTs (see [`ROWS_PER_INSERT`]).
fn insert_rows(inner: &Inner, state: &mut State, batches: &[Vec<NewRow>]) -> Result<(), Error> {
    let insert_all = |conn: &Connection| -> Result<(), Error> {
        let rows: Vec<&NewRow> = batches.iter().flatten().collect();
        let mut rest = &rows[..];
        for (size, sql) in ROWS_PER_INSERT.iter().zip(insert_sqls()) {
            if rest.len() < *size {
                continue;
            }
            let mut stmt = conn
                .prepare_cached(sql)
                .map_err(|e| inner.err("publish", e))?;
            while rest.len() >= *size {
                let (chunk, tail) = rest.split_at(*size);
                insert_chunk(inner, &mut stmt, chunk)?;
                rest = tail;
            }
        }
        Ok(())
    };
    if let [batch] = batches
        && batch.len() == 1
    {
        return insert_all(&state.conn);
    }
    let tx = state
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| inner.err("publish: begin", e))?;
    insert_all(&tx)?;
    tx.commit().map_err(|e| inner.err("publish: commit", e))
}

/// Binds `chunk` (as many rows as `stmt` has) and runs `stmt` once.
fn insert_chunk(
    inner: &Inner,
    stmt: &mut rusqlite::CachedStatement<'_>,
    chunk: &[&NewRow],
) -> Result<(), Error> {
    let bind = |e| inner.err("publish: bind", e);
    for (r, row) in chunk.iter().enumerate() {
        let b = r * 6;
        let mut id = uuid::Uuid::encode_buffer();
        let id: &str = row.event_id.hyphenated().encode_lower(&mut id);
        stmt.raw_bind_parameter(b + 1, id).map_err(bind)?;
        stmt.raw_bind_parameter(b + 2, &*row.queue).map_err(bind)?;
        stmt.raw_bind_parameter(b + 3, &*row.name).map_err(bind)?;
        stmt.raw_bind_parameter(b + 4, row.body.as_str())
            .map_err(bind)?;
        stmt.raw_bind_parameter(b + 5, row.visible_at)
            .map_err(bind)?;
        stmt.raw_bind_parameter(b + 6, row.queued_at)
            .map_err(bind)?;
    }
    let stored = stmt.raw_execute().map_err(|e| inner.err("publish", e))?;
    if stored < chunk.len() {
        tracing::debug!(
            broker = %inner.url,
            "{} of these events are already queued, not stored twice: {}",
            chunk.len() - stored,
            chunk.iter().map(|r| r.event_id.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
