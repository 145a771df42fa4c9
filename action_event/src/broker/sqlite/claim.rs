//! Claiming: how [`Broker::take`](crate::broker::Broker::take) hands out
//! events.
//!
//! # Ownership: a lease
//!
//! An event row is *ready* when `visible_at <= now`. A take claims the first
//! ready row of the first queue (strict priority, in the order given) in one
//! `BEGIN IMMEDIATE` transaction: it sets `visible_at = now + lease`, stores
//! a fresh random claim token and counts the delivery. The heartbeat
//! ([`super::lease`]) keeps the lease of every delivery the broker holds;
//! the events of a poller that died become ready again once their lease
//! lapses, and are handed out with `redelivered = true`. Each claim also
//! records its owner, this broker's process ([`super::owner`]), so that the
//! events of a poller that died come back at once instead.
//!
//! # Acks ride on claims
//!
//! An ack is a write transaction of its own, and SQLite's cost is mostly
//! per transaction (the WAL commit and its locks). While a poller works
//! through a backlog (its last claim found events), an ack waits up to
//! `ack_linger` (URL option, default 2 ms) for the next claim, and that
//! claim's transaction deletes the waiting acks' rows with its own update;
//! acks that no claim carried in time commit together when the linger ends.
//! An ack still returns only once its delete committed: only when it
//! commits changes. The poller frees an event's slot before acking it, so
//! the linger does not hold the next event back. If the process dies in
//! between, the event runs again, as when it dies before the ack.
//! Measured: a poller at concurrency 1 draining 30,000 events (batches of
//! 8) spent 38 µs of CPU per event instead of 83 µs: one write
//! transaction per 8 events instead of 9; the rusqlite loop that claims
//! and deletes one row at a time spends 74 µs.
//!
//! # Cost
//!
//! Claiming is one index range scan per queue looked at (index
//! `events(queue, visible_at, id)`), so it costs the same with ten or a
//! million events waiting; see [`HOT_QUERIES`](super::HOT_QUERIES).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{TransactionBehavior, params};

use super::SqliteBroker;
use super::ahead::Ahead;
use super::conn::{Inner, State, take_pending};
use super::{now_i64, owner, settle};
use crate::Error;
use crate::broker::Delivery;

/// The first sleep of a take that found nothing (doubling up to `poll`).
const FIRST_POLL: Duration = Duration::from_millis(5);

/// The first ready event of one queue: `?1` queue, `?2` now.
pub(super) const CLAIM_SELECT: &str = "SELECT id, event_id, body, deliveries FROM events \
     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT 1";

/// The first `?3` ready events of one queue: `?1` queue, `?2` now.
pub(super) const CLAIM_BATCH: &str = "SELECT id, event_id, body, deliveries, visible_at FROM events \
     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT ?3";

/// `?1` row id, `?2` new visible_at, `?3` claim token, `?4` owner.
pub(super) const CLAIM_UPDATE: &str = "UPDATE events SET visible_at = ?2, claim = ?3, owner = ?4, \
     deliveries = deliveries + 1 WHERE id = ?1";

/// What a [`Delivery`] from this broker carries: the row and the claim token.
#[derive(Debug, Clone)]
pub(super) struct Tag {
    pub(super) row: i64,
    pub(super) claim: String,
    pub(super) event_id: String,
}

/// Takes the next ready event of `queues` (strict priority), waiting up to
/// `wait` for one.
pub(super) async fn take(
    broker: &SqliteBroker,
    queues: &[String],
    wait: Duration,
) -> Result<Option<Delivery>, Error> {
    let start = Instant::now();
    let mut sleep = FIRST_POLL.min(broker.inner.cfg.poll);
    loop {
        let queues = queues.to_vec();
        if let Some(d) = broker
            .run(move |inner, state| claim_once(inner, state, &queues))
            .await?
        {
            return Ok(Some(d));
        }
        let elapsed = start.elapsed();
        if elapsed >= wait {
            return Ok(None);
        }
        tokio::time::sleep(sleep.min(wait - elapsed)).await;
        sleep = (sleep * 2).min(broker.inner.cfg.poll);
    }
}

/// One claim attempt over `queues`, in order.
fn claim_once(
    inner: &Inner,
    state: &mut State,
    queues: &[String],
) -> Result<Option<Delivery>, Error> {
    let now = now_i64();
    state.taking = true;
    // An event claimed ahead, of the first queue asked for that has one, if
    // no queue listed before it has a ready event (then the claim below
    // takes that one first). Nothing changes before the reads succeed: `run`
    // may call this again.
    let ahead = queues.iter().enumerate().find_map(|(i, q)| {
        state
            .ahead
            .iter()
            .position(|a| &a.queue == q)
            .map(|pos| (i, pos))
    });
    if let Some((i, pos)) = ahead
        && !any_ready(inner, state, &queues[..i], now)?
    {
        return Ok(state.ahead.remove(pos).map(Ahead::into_delivery));
    }
    // With an event claimed ahead, only the queues before its own are
    // claimed from (one of them had a ready event just now).
    let scan = match ahead {
        Some((i, _)) => &queues[..i],
        None => queues,
    };
    // A plain read first when the last claim found nothing: an idle poll
    // never takes the write lock, so idle pollers in other processes do not
    // queue up behind each other or behind publishers. While a backlog is
    // being claimed, the read would only repeat what the claim looks at.
    if ahead.is_none() && state.peek && !any_ready(inner, state, queues, now)? {
        inner.claiming.store(false, Ordering::Relaxed);
        return Ok(None);
    }
    // Something is ready: claim it under the write lock, looking again in
    // priority order (another poller may have taken it meanwhile).
    let tx = state
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| inner.err("take: begin", e))?;
    // The acks waiting for a claim go in this transaction (module docs,
    // *Acks ride on claims*); forgotten by the heartbeat first, like any
    // ack, even if the transaction then fails.
    let acks = take_pending(&inner.acks);
    for a in &acks.items {
        state.held.remove(&(a.row, a.claim.clone()));
    }
    let claimed = (|| {
        for a in &acks.items {
            settle::delete_acked(inner, &tx, a)?;
        }
        let Some((queue, rows)) = select_ready(inner, &tx, scan, now)? else {
            return Ok(None);
        };
        // The first claim registers this broker as an owner, in the same
        // transaction: `state.owner` is set only once it committed.
        let owner = match state.owner {
            Some(id) => Some(id),
            None => owner::register(&tx, now).map_err(|e| inner.err("take: owner", e))?,
        };
        let random = rand::random::<u128>();
        let claim = match owner {
            Some(id) => format!("{}{random:032x}", owner::claim_prefix(id)),
            None => format!("{random:032x}"),
        };
        let until = now.saturating_add(inner.lease_ms());
        let mut update = tx
            .prepare_cached(CLAIM_UPDATE)
            .map_err(|e| inner.err("take", e))?;
        for (row, ..) in &rows {
            update
                .execute(params![row, until, claim, owner])
                .map_err(|e| inner.err("take", e))?;
        }
        Ok(Some((queue, rows, owner, claim)))
    })();
    let claimed = match claimed {
        // Nothing ready and no ack: nothing written, the rollback is free.
        Ok(None) if acks.items.is_empty() => {
            drop(tx);
            Ok(None)
        }
        Ok(c) => tx
            .commit()
            .map(|()| c)
            .map_err(|e| inner.err("take: commit", e)),
        Err(e) => Err(e),
    };
    acks.finish(&inner.url, claimed.as_ref().map(|_| ()));
    let Some((queue, rows, owner, claim)) = claimed? else {
        // The higher queues are empty now: the event claimed ahead goes.
        if let Some((_, pos)) = ahead {
            return Ok(state.ahead.remove(pos).map(Ahead::into_delivery));
        }
        inner.claiming.store(false, Ordering::Relaxed);
        state.peek = true;
        return Ok(None);
    };
    inner.claiming.store(true, Ordering::Relaxed);
    state.owner = owner;
    state.peek = false;
    let since = Instant::now();
    let mut first = None;
    for (row, event_id, body, deliveries, visible_at) in rows {
        state.held.insert((row, claim.clone()), event_id.clone());
        let a = Ahead {
            queue: queue.clone(),
            tag: Tag {
                row,
                claim: claim.clone(),
                event_id,
            },
            body,
            redelivered: deliveries + 1 > 1,
            visible_at,
            since,
        };
        match first {
            None => first = Some(a),
            Some(_) => state.ahead.push_back(a),
        }
    }
    Ok(first.map(Ahead::into_delivery))
}

/// A row [`CLAIM_BATCH`] found: id, event id, body, deliveries, visible_at.
type ClaimedRow = (i64, String, String, i64, i64);

/// The first queue of `scan` with ready events, and up to `batch` of them.
fn select_ready(
    inner: &Inner,
    conn: &rusqlite::Connection,
    scan: &[String],
    now: i64,
) -> Result<Option<(String, Vec<ClaimedRow>)>, Error> {
    let mut select = conn
        .prepare_cached(CLAIM_BATCH)
        .map_err(|e| inner.err("take", e))?;
    for queue in scan {
        let rows = select
            .query_map(params![queue, now, inner.cfg.batch], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| inner.err("take", e))?;
        if !rows.is_empty() {
            return Ok(Some((queue.clone(), rows)));
        }
    }
    Ok(None)
}

/// Whether any of `queues` has a ready event (a plain read).
fn any_ready(inner: &Inner, state: &State, queues: &[String], now: i64) -> Result<bool, Error> {
    if queues.is_empty() {
        return Ok(false);
    }
    let mut peek = state
        .conn
        .prepare_cached(CLAIM_SELECT)
        .map_err(|e| inner.err("take", e))?;
    for queue in queues {
        if peek
            .exists(params![queue, now])
            .map_err(|e| inner.err("take", e))?
        {
            return Ok(true);
        }
    }
    Ok(false)
}
