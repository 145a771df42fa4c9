//! Claiming ahead: events a batch claim took and has not handed out yet.
//!
//! A claim takes up to `batch` ready events of the first queue that has
//! any, in one transaction: the first is handed out, the others wait in the
//! broker, claimed (leased, kept alive by the heartbeat like events in
//! hand), and are handed out by the next `take`s without another write,
//! each only after a read finds no ready event in a queue listed before
//! its own: strict priority holds at hand-out, not only at claim. Events
//! claimed ahead count in [`Broker::depth`] neither as waiting nor as
//! scheduled, like events in hand. They go back, with their place in the
//! queue and their delivery count as they were, when the poller stops
//! taking ([`Broker::give_back`]), when the broker is dropped, and once
//! they waited more than 1 s (looked for every 0.25 s), so a poller
//! busy with long events does not keep them from other pollers; if the
//! process dies, they come back like events in hand: at once when another
//! broker sees their owner gone ([`super::owner`]), else when their lease
//! lapses. `batch=1` claims one at a time.
//! Measured (bench, draining 100,000 events against a rusqlite loop that
//! claims and deletes one row at a time): one claim per event ran at 0.71x
//! / 0.81x / 0.84x its rate at concurrency 1 / 8 / 64, batches of 8 at
//! 1.07x / 1.63x / 1.56x.
//!
//! [`Broker::depth`]: crate::broker::Broker::depth
//! [`Broker::give_back`]: crate::broker::Broker::give_back

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rusqlite::{TransactionBehavior, params};

use super::SqliteBroker;
use super::claim::Tag;
use super::conn::{Inner, State};
use crate::Error;
use crate::broker::Delivery;

/// How long an event claimed ahead may wait in the broker before the
/// heartbeat gives it back (module docs).
pub(super) const AHEAD_MAX: Duration = Duration::from_secs(1);

/// Gives back an event claimed ahead as it was: `?1` row id, `?2` claim
/// token, `?3` its visible_at before the claim.
pub(super) const UNCLAIM: &str = "UPDATE events SET visible_at = ?3, claim = NULL, owner = NULL, \
     deliveries = deliveries - 1 WHERE id = ?1 AND claim = ?2";

/// An event claimed ahead.
pub(super) struct Ahead {
    pub(super) queue: String,
    pub(super) tag: Tag,
    pub(super) body: String,
    pub(super) redelivered: bool,
    /// Its `visible_at` before the claim, restored if it goes back.
    pub(super) visible_at: i64,
    pub(super) since: Instant,
}

impl Ahead {
    pub(super) fn into_delivery(self) -> Delivery {
        Delivery {
            queue: self.queue,
            body: self.body.into_bytes(),
            redelivered: self.redelivered,
            tag: Box::new(self.tag),
        }
    }
}

/// Gives back every event claimed ahead (see
/// [`Broker::give_back`](crate::broker::Broker::give_back)).
pub(super) async fn give_back(broker: &SqliteBroker) -> Result<(), Error> {
    broker
        .run(|inner, state| unclaim_ahead(inner, state, |_| true).map(|_| ()))
        .await
}

/// Gives back the events claimed ahead that `go_back` picks, in one
/// transaction, as they were before the claim (module docs).
/// Returns how many went back.
pub(super) fn unclaim_ahead(
    inner: &Inner,
    state: &mut State,
    go_back: impl Fn(&Ahead) -> bool,
) -> Result<usize, Error> {
    // Picked once: a time-based pick could change between the update and
    // the bookkeeping, and leave an event claimed that nobody holds.
    let pick: Vec<bool> = state.ahead.iter().map(&go_back).collect();
    let n = pick.iter().filter(|p| **p).count();
    if n == 0 {
        return Ok(0);
    }
    let tx = state
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| inner.err("give back: begin", e))?;
    {
        let mut stmt = tx
            .prepare_cached(UNCLAIM)
            .map_err(|e| inner.err("give back", e))?;
        for (a, _) in state.ahead.iter().zip(&pick).filter(|(_, p)| **p) {
            stmt.execute(params![a.tag.row, a.tag.claim, a.visible_at])
                .map_err(|e| inner.err("give back", e))?;
        }
    }
    tx.commit().map_err(|e| inner.err("give back: commit", e))?;
    let mut keep = VecDeque::with_capacity(state.ahead.len() - n);
    for (a, back) in std::mem::take(&mut state.ahead).into_iter().zip(pick) {
        if back {
            state.held.remove(&(a.tag.row, a.tag.claim));
        } else {
            keep.push_back(a);
        }
    }
    state.ahead = keep;
    Ok(n)
}
