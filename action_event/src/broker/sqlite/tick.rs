//! Periodic ticks on SQLite: an atomic claim per tick.
//!
//! The table `periodic_ticks` (created at open if it does not exist; it
//! needs no schema version: older builds ignore it) holds the last tick
//! queued per event. A claim is one `BEGIN IMMEDIATE` transaction: it reads
//! the event's row, and only if the last tick is still the one the
//! scheduler planned from does it record the new tick and insert the
//! tick's event. Pollers racing for a tick serialize on the write lock;
//! the first commits, the others see the new last tick and queue nothing.
//! So each tick is queued exactly once; the event's deterministic id
//! ([`crate::periodic::tick_id`]) is unique in `events` as well.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{SqliteBroker, now_i64, text};
use crate::Error;
use crate::periodic::{TickClaim, TickState};

/// Run at every open, after the versioned schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS periodic_ticks (
    name       TEXT PRIMARY KEY,
    last_tick  INTEGER NOT NULL,
    queued_at  INTEGER NOT NULL
);
";

const SELECT_ALL: &str = "SELECT name, last_tick FROM periodic_ticks";
const SELECT_ONE: &str = "SELECT last_tick FROM periodic_ticks WHERE name = ?1";
const UPSERT: &str = "INSERT INTO periodic_ticks (name, last_tick, queued_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick, queued_at = excluded.queued_at";

pub(super) async fn state(broker: &SqliteBroker) -> Result<TickState, Error> {
    broker
        .run(|inner, state| {
            let mut stmt = state
                .conn
                .prepare_cached(SELECT_ALL)
                .map_err(|e| inner.err("periodic ticks", e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(|e| inner.err("periodic ticks", e))?;
            let mut last = BTreeMap::new();
            for row in rows {
                let (name, tick) = row.map_err(|e| inner.err("periodic ticks", e))?;
                last.insert(name, tick);
            }
            Ok(TickState { holder: true, last })
        })
        .await
}

pub(super) async fn claim(broker: &SqliteBroker, claim: &TickClaim) -> Result<bool, Error> {
    let claim = claim.clone();
    let row = claim.envelope.as_ref().map(|env| {
        (
            env.id.to_string(),
            env.queue.clone(),
            env.name.clone(),
            text(env.to_bytes()),
        )
    });
    broker
        .run(move |inner, state| {
            let err = |e: rusqlite::Error| inner.err("periodic tick claim", e);
            let tx = state
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let current: Option<i64> = tx
                .prepare_cached(SELECT_ONE)
                .and_then(|mut s| s.query_row(params![claim.name], |r| r.get(0)).optional())
                .map_err(err)?;
            if current != claim.expected {
                return Ok(false);
            }
            let now = now_i64();
            tx.prepare_cached(UPSERT)
                .and_then(|mut s| s.execute(params![claim.name, claim.tick, now]))
                .map_err(err)?;
            if let Some((id, queue, name, body)) = &row {
                tx.prepare_cached(super::publish::INSERT)
                    .and_then(|mut s| s.execute(params![id, queue, name, body, now, now]))
                    .map_err(err)?;
            }
            tx.commit().map_err(err)?;
            Ok(true)
        })
        .await
}
