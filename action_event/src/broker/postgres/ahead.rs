//! Claiming ahead: events a batch claim took and has not handed out yet.
//!
//! A claim takes several ready events of the first queue that has any, in
//! one statement ([`super::claim`]): the first is handed out, the others
//! wait in the broker, claimed (owner, lease, kept alive by the heartbeat
//! like events in hand), and are handed out by the next `take`s without
//! another write, each only after a read finds no ready event in a queue
//! listed before its own: strict priority holds at hand-out, not only at
//! claim. Events claimed ahead count in [`Broker::depth`] neither as
//! waiting nor as scheduled, like events in hand.
//!
//! They go back, with their place in the queue and their delivery count as
//! they were, when
//! - the poller stops taking ([`Broker::give_back`], on SIGTERM too);
//! - their queue is seen paused (`crate::broker::paused`);
//! - they waited more than 1 s (`AHEAD_MAX`) (the heartbeat looks every
//!   second), so a poller busy with long events does not keep them from
//!   other pollers;
//! - the broker is dropped (a task does it, if a runtime is still there).
//!
//! If the process dies, they come back like events in hand: within a
//! second, when another broker sees their owner's lock gone
//! ([`super::owner`]), else when their lease lapses. `?batch=1` claims one
//! at a time and never holds events ahead.
//!
//! [`Broker::depth`]: crate::broker::Broker::depth
//! [`Broker::give_back`]: crate::broker::Broker::give_back

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::claim::Tag;
use super::{Inner, schema};
use crate::Error;
use crate::broker::Delivery;

/// How long an event claimed ahead may wait in the broker before the
/// heartbeat gives it back (module docs).
pub(super) const AHEAD_MAX: Duration = Duration::from_secs(1);

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

/// Takes out the event claimed ahead of the first queue of `queues` that
/// has one, with that queue's index in `queues`.
pub(super) fn pop(inner: &Inner, queues: &[String]) -> Option<(usize, Ahead)> {
    let mut ahead = inner.ahead();
    let (i, pos) = queues
        .iter()
        .enumerate()
        .find_map(|(i, q)| ahead.iter().position(|a| &a.queue == q).map(|pos| (i, pos)))?;
    ahead.remove(pos).map(|a| (i, a))
}

/// Puts back an event [`pop`] took out and did not hand out, first of its
/// queue.
pub(super) fn unpop(inner: &Inner, a: Ahead) {
    inner.ahead().push_front(a);
}

/// Whether an event of `queues` is claimed ahead.
pub(super) fn has(inner: &Inner, queues: &[String]) -> bool {
    inner.ahead().iter().any(|a| queues.contains(&a.queue))
}

/// Gives back every event claimed ahead
/// ([`Broker::give_back`](crate::broker::Broker::give_back)).
pub(super) async fn give_back(inner: &Inner) -> Result<usize, Error> {
    give_back_if(inner, |_| true).await
}

/// Gives back, in one statement, the events claimed ahead that `go_back`
/// picks, as they were before the claim; returns how many went back. They
/// leave the broker's list first, so no take hands one out meanwhile; if
/// the statement fails they return to it (still claimed, still leased).
pub(super) async fn give_back_if(
    inner: &Inner,
    go_back: impl Fn(&Ahead) -> bool,
) -> Result<usize, Error> {
    let picked: Vec<Ahead> = {
        let mut ahead = inner.ahead();
        let (back, keep): (VecDeque<Ahead>, VecDeque<Ahead>) =
            std::mem::take(&mut *ahead).into_iter().partition(&go_back);
        *ahead = keep;
        Vec::from(back)
    };
    if picked.is_empty() {
        return Ok(0);
    }
    let rows: Vec<i64> = picked.iter().map(|a| a.tag.row).collect();
    let claims: Vec<i64> = picked.iter().map(|a| a.tag.claim).collect();
    let visible: Vec<i64> = picked.iter().map(|a| a.visible_at).collect();
    let res = sqlx::query(&inner.sql.unclaim)
        .bind(&rows)
        .bind(&claims)
        .bind(&visible)
        .execute(&inner.pool)
        .await;
    if let Err(e) = res {
        let mut ahead = inner.ahead();
        for a in picked.into_iter().rev() {
            ahead.push_front(a);
        }
        return Err(inner.err("giving back events claimed ahead", e));
    }
    {
        let mut held = inner.held();
        for row in &rows {
            held.remove(row);
        }
    }
    // Ready again: this broker's takes and every other broker's.
    inner.waiter.bump();
    let _ = sqlx::query("SELECT pg_notify($1, '')")
        .bind(schema::channel(&inner.cfg.schema))
        .execute(&inner.pool)
        .await;
    Ok(picked.len())
}

/// Gives back the events claimed ahead that waited more than
/// [`AHEAD_MAX`] (the heartbeat calls it).
pub(super) async fn give_back_stale(inner: &Inner) {
    let stale = |a: &Ahead| a.since.elapsed() > AHEAD_MAX;
    if !inner.ahead().iter().any(stale) {
        return;
    }
    match give_back_if(inner, stale).await {
        Ok(n) => {
            tracing::debug!(broker = %inner.url, "gave back {n} event(s) claimed ahead and not started within {AHEAD_MAX:?}")
        }
        Err(e) => {
            tracing::warn!(broker = %inner.url, "{e} (they stay claimed; tried again in a second)")
        }
    }
}
