//! Publishing: one row per event, concurrent publishes committed together.

use rusqlite::{Connection, TransactionBehavior, params};

use super::conn::{Inner, State};
use super::{SqliteBroker, ms_i64, now_i64, text};
use crate::Error;
use crate::envelope::Envelope;

/// `?1` event id, `?2` queue, `?3` name, `?4` body, `?5` visible_at, `?6` queued_at.
pub(super) const INSERT: &str = "INSERT INTO events (event_id, queue, name, body, visible_at, queued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (event_id) DO NOTHING";

/// A row a publish stores.
pub(super) struct NewRow {
    event_id: String,
    queue: String,
    name: String,
    body: String,
    visible_at: i64,
    queued_at: i64,
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
    let rows = envelopes
        .iter()
        .map(|envelope| new_row(envelope, now))
        .collect();
    broker
        .group_commit(|inner| &inner.publishes, rows, insert_rows)
        .await
}

fn new_row(envelope: &Envelope, now: i64) -> NewRow {
    NewRow {
        // The hyphenated text without the formatter (its padding machinery
        // cost more than the encoding itself).
        event_id: envelope
            .id
            .0
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_string(),
        queue: envelope.queue.clone(),
        name: envelope.name.clone(),
        body: text(envelope.to_bytes()),
        visible_at: envelope.run_at_ms.map(ms_i64).unwrap_or(now),
        queued_at: match envelope.queued_at_ms {
            0 => now,
            ms => ms_i64(ms),
        },
    }
}

/// Stores `batches` in one transaction (one autocommit insert for a single
/// row). The statement is looked up once per call, not once per row: the
/// statement cache hashes the SQL text on every lookup.
fn insert_rows(inner: &Inner, state: &mut State, batches: &[Vec<NewRow>]) -> Result<(), Error> {
    let insert_all = |conn: &Connection| -> Result<(), Error> {
        let mut stmt = conn
            .prepare_cached(INSERT)
            .map_err(|e| inner.err("publish", e))?;
        for row in batches.iter().flatten() {
            let n = stmt
                .execute(params![
                    row.event_id,
                    row.queue,
                    row.name,
                    row.body,
                    row.visible_at,
                    row.queued_at
                ])
                .map_err(|e| inner.err("publish", e))?;
            if n == 0 {
                tracing::debug!(broker = %inner.url, event_id = %row.event_id, "event {} is already queued: not stored twice", row.event_id);
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
