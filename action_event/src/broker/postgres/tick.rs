//! Periodic ticks on PostgreSQL: an atomic claim per tick.
//!
//! The table `periodic_ticks` (schema version 3) holds the last tick
//! queued per event. A claim is one transaction: a compare-and-set on the
//! event's row (the first tick: `INSERT .. ON CONFLICT DO NOTHING`; the
//! next ones: `UPDATE .. WHERE last_tick = expected`) and, only if it
//! changed the row, the insert of the tick's event. Pollers racing for a
//! tick serialize on the row (its lock, or the unique key of a first
//! insert): the first commits, the others then find a last tick that is
//! not the one they planned from and queue nothing. So each tick is
//! queued exactly once; the event's deterministic id
//! ([`crate::periodic::tick_id`]) is unique in `events` as well.

use std::collections::BTreeMap;

use super::{Inner, now_i64, publish};
use crate::Error;
use crate::periodic::{TickClaim, TickState};

/// Every event's last tick; this backend may always queue ticks.
pub(super) async fn state(inner: &Inner) -> Result<TickState, Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT name, last_tick FROM {}.periodic_ticks",
        inner.cfg.schema
    ))
    .fetch_all(&inner.pool)
    .await
    .map_err(|e| inner.err("periodic ticks", e))?;
    Ok(TickState {
        holder: true,
        last: rows.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

/// Claims `claim.tick` (module docs): `Ok(false)` when another poller was first.
pub(super) async fn claim(inner: &Inner, claim: &TickClaim) -> Result<bool, Error> {
    let err = |e: sqlx::Error| inner.err("periodic tick claim", e);
    let s = &inner.cfg.schema;
    let now = now_i64();
    let mut tx = inner.pool.begin().await.map_err(err)?;
    let changed = match claim.expected {
        None => {
            sqlx::query(&format!(
                "INSERT INTO {s}.periodic_ticks (name, last_tick, queued_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING"
            ))
            .bind(&claim.name)
            .bind(claim.tick)
            .bind(now)
            .execute(&mut *tx)
            .await
        }
        Some(expected) => {
            sqlx::query(&format!(
                "UPDATE {s}.periodic_ticks SET last_tick = $2, queued_at = $3 \
                 WHERE name = $1 AND last_tick IS NOT DISTINCT FROM $4"
            ))
            .bind(&claim.name)
            .bind(claim.tick)
            .bind(now)
            .bind(expected)
            .execute(&mut *tx)
            .await
        }
    }
    .map_err(err)?
    .rows_affected();
    if changed == 0 {
        // Another poller was first: nothing written (the transaction rolls
        // back when dropped).
        return Ok(false);
    }
    if let Some(env) = &claim.envelope {
        publish::insert_on(&mut tx, &inner.sql.insert, std::slice::from_ref(env))
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(true)
}
