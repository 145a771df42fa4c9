//! Publishing: one row per event, concurrent publishes committed together.

use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};

use super::conn::{Inner, State};
use super::{SqliteBroker, ms_i64, now_i64, text};
use crate::Error;
use crate::envelope::{Envelope, EventId};

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
    let mut rows = Rows::new();
    let rows = envelopes
        .iter()
        .map(|envelope| rows.row(envelope))
        .collect();
    broker
        .group_commit(|inner| &inner.publishes, rows, insert_rows)
        .await
}

/// Makes the rows of a batch: one clock reading, and the queue and name
/// shared with the row before when equal (a batch is mostly one event on
/// one queue: a reference count, not a copy, per row).
struct Rows {
    now: i64,
    last: Option<(Arc<str>, Arc<str>)>,
}

impl Rows {
    fn new() -> Rows {
        Rows {
            now: now_i64(),
            last: None,
        }
    }

    fn row(&mut self, envelope: &Envelope) -> NewRow {
        let (queue, name) = match &self.last {
            Some((q, n)) if **q == *envelope.queue && **n == *envelope.name => {
                (Arc::clone(q), Arc::clone(n))
            }
            _ => {
                let fresh: (Arc<str>, Arc<str>) = (
                    envelope.queue.as_str().into(),
                    envelope.name.as_str().into(),
                );
                self.last = Some(fresh.clone());
                fresh
            }
        };
        new_row(envelope, queue, name, self.now)
    }
}

/// Envelopes per chunk handed to the writer of a streamed batch: one full
/// statement of [`ROWS_PER_INSERT`].
const STREAM_CHUNK: usize = ROWS_PER_INSERT[0];

/// What the writer of a streamed batch gets.
enum Chunk {
    Rows(Vec<NewRow>),
    /// Every envelope was made and checked: commit.
    Commit,
}

/// Stores what `batch` yields in one transaction, all or none (see
/// [`Broker::publish_checked`](crate::broker::Broker::publish_checked)).
/// A batch of more than one chunk is pipelined: a blocking thread holds the
/// connection and the write transaction and inserts each chunk while this
/// task makes and checks the next envelopes, so both cores work (the
/// client's side, request to row, costs about as much as storing the row).
/// The transaction commits only after the last envelope was made; an
/// `Err` from `batch` (a request that does not fit), or this future being
/// dropped, rolls it back. A smaller batch joins the group commit like
/// [`publish_many`].
pub(super) async fn publish_checked(
    broker: &SqliteBroker,
    batch: &mut (dyn Iterator<Item = Result<Envelope, Error>> + Send),
) -> Result<Vec<EventId>, Error> {
    let mut first = Vec::with_capacity(STREAM_CHUNK);
    while first.len() < STREAM_CHUNK {
        match batch.next() {
            Some(envelope) => first.push(envelope?),
            None => break,
        }
    }
    let mut ids: Vec<EventId> = first.iter().map(|e| e.id).collect();
    let Some(next) = batch.next() else {
        publish_many(broker, &first).await?;
        return Ok(ids);
    };
    let next = next?;
    ids.reserve(batch.size_hint().0 + 1);
    let guard = Arc::clone(&broker.inner.state).lock_owned().await;
    // Two chunks waiting at most: the maker stays a chunk or two ahead.
    let (to_writer, chunks) = tokio::sync::mpsc::channel::<Chunk>(2);
    let inner = Arc::clone(&broker.inner);
    let writer = tokio::task::spawn_blocking(move || write_stream(&inner, guard, chunks));
    let mut rows = Rows::new();
    let made = async {
        let full: Vec<NewRow> = first.iter().map(|e| rows.row(e)).collect();
        drop(first);
        if to_writer.send(Chunk::Rows(full)).await.is_err() {
            return Ok(());
        }
        let mut chunk = Vec::with_capacity(STREAM_CHUNK);
        ids.push(next.id);
        chunk.push(rows.row(&next));
        for envelope in batch {
            let envelope = envelope?;
            ids.push(envelope.id);
            chunk.push(rows.row(&envelope));
            if chunk.len() >= STREAM_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(STREAM_CHUNK));
                if to_writer.send(Chunk::Rows(full)).await.is_err() {
                    // The writer stopped: its result says why.
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() && to_writer.send(Chunk::Rows(chunk)).await.is_err() {
            return Ok(());
        }
        let _ = to_writer.send(Chunk::Commit).await;
        Ok::<(), Error>(())
    };
    let made = made.await;
    drop(to_writer);
    let written = writer
        .await
        .map_err(|e| Error::broker(&broker.inner.url, format!("database task failed: {e}")))?;
    // A bad envelope is the error even though the writer, rolled back,
    // says only that the batch ended early.
    made?;
    written?;
    Ok(ids)
}

/// The writer of a streamed batch: one write transaction (waiting up to
/// `busy_timeout` for another connection's lock), each chunk inserted as
/// it comes, committed on [`Chunk::Commit`], rolled back if the maker
/// stops first.
fn write_stream(
    inner: &Inner,
    mut guard: tokio::sync::OwnedMutexGuard<State>,
    mut chunks: tokio::sync::mpsc::Receiver<Chunk>,
) -> Result<(), Error> {
    inner.waiting(&mut guard, |state| {
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| inner.err("publish: begin", e))?;
        loop {
            match chunks.blocking_recv() {
                Some(Chunk::Rows(rows)) => {
                    let rows: Vec<&NewRow> = rows.iter().collect();
                    insert_all(inner, &tx, &rows)?;
                }
                Some(Chunk::Commit) => {
                    return tx.commit().map_err(|e| inner.err("publish: commit", e));
                }
                // Dropping `tx` rolls the batch back.
                None => {
                    return Err(inner.err(
                        "publish",
                        "the batch ended before its last event; nothing of it was stored",
                    ));
                }
            }
        }
    })
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
    let rows: Vec<&NewRow> = batches.iter().flatten().collect();
    if let [batch] = batches
        && batch.len() == 1
    {
        return insert_all(inner, &state.conn, &rows);
    }
    let tx = state
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| inner.err("publish: begin", e))?;
    insert_all(inner, &tx, &rows)?;
    tx.commit().map_err(|e| inner.err("publish: commit", e))
}

/// Inserts `rows` on `conn`, in statements of [`ROWS_PER_INSERT`] rows.
fn insert_all(inner: &Inner, conn: &Connection, rows: &[&NewRow]) -> Result<(), Error> {
    let mut rest = rows;
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
