//! Taking events: [`Broker::take`](crate::broker::Broker::take).
//!
//! # Claim
//!
//! An event row is *ready* when `visible_at <= now`. A claim looks at the
//! queues in the order given (strict priority) and takes up to `k` ready
//! rows of the first queue that has any, oldest first, in one statement:
//! `WITH picked AS (SELECT .. ORDER BY visible_at, id LIMIT k FOR UPDATE
//! SKIP LOCKED) UPDATE .. FROM picked RETURNING ..`, which sets the lease,
//! a fresh claim token and the owner ([`super::owner`]). `SKIP LOCKED`
//! lets any number of pollers claim at once without waiting for each
//! other, and never hands one row to two of them. Each lookup is one range
//! scan of the index `events(queue, visible_at, id)`: the cost does not
//! grow with the number of events waiting.
//!
//! The first row is handed out; the others are held ahead
//! ([`super::ahead`]) and handed out by the next takes, each only when the
//! queues listed before its own have nothing ready: a `medium` event held
//! ahead never starts while a `high` one is ready. That is known without a
//! read while the answer of the last look stands (the claim that took the
//! batch found `high` empty, and no notification or due time since, see
//! [`super::wait`]), else a read finds out. If one is ready, the take
//! claims from the higher queues first and the held event waits.
//!
//! `k` is the URL's `batch` (default 8), or the number of takes waiting in
//! this broker if that is more (a poller at concurrency 64 with 64 free
//! slots claims 64 at once and hands them all out at once); `batch=1`
//! claims one at a time. Within a broker one claim runs at a time; handing
//! out needs no lock.
//!
//! Measured (`action_event_bench --backend postgres`: 100,000 events
//! waiting in `medium`, pollers serving `high medium low`, against a sqlx
//! loop that claims one row with `SKIP LOCKED` and deletes it, a pool of 10
//! on both sides, best of 3, on a shared 2-core box): 4.29x / 1.43x /
//! 1.31x the loop's rate at concurrency 1 / 8 / 64. One claim per take,
//! handed out in claim order, had run at 0.73x / 0.14x / 0.37x (20,000
//! events): the poller takes one event at a time, so every round trip of a
//! take is paid by every event.
//!
//! # Waiting
//!
//! A take that finds nothing waits for one wake-up per broker
//! ([`super::wait`]): a `NOTIFY` (the insert trigger, see
//! [`super::schema`]), the earliest delayed or retried event of its queues
//! being due, or at most `poll` (a safety net for leases that lapse);
//! never longer than its `wait`. Idle pollers send no query per waiting
//! slot.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ahead::{self, Ahead};
use super::{Inner, now_i64};
use crate::Error;
use crate::broker::Delivery;

/// What a [`Delivery`] from this broker carries: the row and the claim.
#[derive(Debug, Clone)]
pub(super) struct Tag {
    pub(super) row: i64,
    pub(super) claim: i64,
    pub(super) event_id: String,
}

/// Counts the takes inside [`take`] (the size of a claim, module docs).
struct Taker<'a>(&'a Inner);

impl<'a> Taker<'a> {
    fn new(inner: &'a Inner) -> Taker<'a> {
        inner.takers.fetch_add(1, Ordering::Relaxed);
        Taker(inner)
    }
}

impl Drop for Taker<'_> {
    fn drop(&mut self) {
        self.0.takers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes the next ready event of `queues` (strict priority), waiting up to
/// `wait` for one.
pub(super) async fn take(
    inner: &Inner,
    queues: &[String],
    wait: Duration,
) -> Result<Option<Delivery>, Error> {
    let deadline = Instant::now() + wait;
    let _taker = Taker::new(inner);
    loop {
        if let Some(d) = next(inner, queues).await? {
            return Ok(Some(d));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match inner.waiter.stands(queues, inner.cfg.poll) {
            Some(stands) => inner.waiter.wait(left.min(stands)).await,
            // The answer fell while it was being given (a notification
            // came): look again at once.
            None => tokio::task::yield_now().await,
        }
    }
}

/// The next event of `queues`: one held ahead, else a new claim.
async fn next(inner: &Inner, queues: &[String]) -> Result<Option<Delivery>, Error> {
    loop {
        let (scan, held) = match ahead::pop(inner, queues) {
            Some((0, a)) => return Ok(Some(hand_out(inner, a))),
            Some((i, a)) => {
                let higher = &queues[..i];
                if inner.waiter.stands(higher, inner.cfg.poll).is_some() {
                    return Ok(Some(hand_out(inner, a)));
                }
                let epoch = inner.waiter.epoch();
                match any_ready(inner, higher).await {
                    Ok((false, due)) => {
                        inner.waiter.found_nothing(epoch, higher, due);
                        return Ok(Some(hand_out(inner, a)));
                    }
                    Ok((true, _)) => (higher, Some(a)),
                    Err(e) => {
                        ahead::unpop(inner, a);
                        return Err(e);
                    }
                }
            }
            None => {
                if inner.waiter.stands(queues, inner.cfg.poll).is_some() {
                    return Ok(None);
                }
                (queues, None)
            }
        };
        let one_at_a_time = inner.claiming.lock().await;
        if held.is_none() {
            // Another take may have claimed or looked while this one
            // waited for the lock.
            if ahead::has(inner, queues) {
                drop(one_at_a_time);
                continue;
            }
            if inner.waiter.stands(queues, inner.cfg.poll).is_some() {
                return Ok(None);
            }
        }
        let epoch = inner.waiter.epoch();
        let claimed = claim(inner, scan, epoch).await;
        drop(one_at_a_time);
        return match (claimed, held) {
            (Ok(Some(d)), held) => {
                if let Some(a) = held {
                    ahead::unpop(inner, a);
                }
                Ok(Some(d))
            }
            // The higher queues' events were taken meanwhile.
            (Ok(None), Some(a)) => Ok(Some(hand_out(inner, a))),
            (Ok(None), None) => {
                let due = next_due(inner, queues).await?;
                inner.waiter.found_nothing(epoch, queues, due);
                Ok(None)
            }
            (Err(e), held) => {
                if let Some(a) = held {
                    ahead::unpop(inner, a);
                }
                Err(e)
            }
        };
    }
}

/// Hands out an event held ahead, and wakes another take if more are held.
fn hand_out(inner: &Inner, a: Ahead) -> Delivery {
    if !inner.ahead().is_empty() {
        inner.waiter.pass_on();
    }
    a.into_delivery()
}

/// One claim over `queues`, in order: up to `k` rows of the first queue
/// that has ready ones (module docs). The first is returned, the others
/// are held ahead. The queues before it had nothing ready: recorded (in
/// `epoch`, read before this look) so that the events held ahead are
/// handed out without a read while that stands ([`super::wait`]).
async fn claim(inner: &Inner, queues: &[String], epoch: u64) -> Result<Option<Delivery>, Error> {
    let k = if inner.cfg.batch <= 1 {
        1
    } else {
        let takers = u32::try_from(inner.takers.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        inner.cfg.batch.max(takers).min(1000)
    };
    let now = now_i64();
    let until = now.saturating_add(inner.lease_ms());
    let claim: i64 = rand::random();
    for (i, queue) in queues.iter().enumerate() {
        let mut rows: Vec<(i64, String, String, i32, i64)> = sqlx::query_as(&inner.sql.claim)
            .bind(queue)
            .bind(now)
            .bind(until)
            .bind(claim)
            .bind(inner.owner)
            .bind(i64::from(k))
            .fetch_all(&inner.pool)
            .await
            .map_err(|e| inner.err("take", e))?;
        if rows.is_empty() {
            continue;
        }
        let held_ahead = rows.len() > 1;
        // RETURNING keeps no order: the queue's order is (visible_at, id).
        rows.sort_unstable_by_key(|r| (r.4, r.0));
        inner.held().extend(rows.iter().map(|r| r.0));
        let since = Instant::now();
        let mut rows = rows
            .into_iter()
            .map(|(row, event_id, body, deliveries, visible_at)| Ahead {
                queue: queue.clone(),
                tag: Tag {
                    row,
                    claim,
                    event_id,
                },
                body,
                redelivered: deliveries > 1,
                visible_at,
                since,
            });
        let first = rows.next();
        inner.ahead().extend(rows);
        if held_ahead {
            inner.waiter.pass_on();
            if i > 0 {
                // Without this answer, each event held ahead costs a read.
                let higher = &queues[..i];
                match next_due(inner, higher).await {
                    Ok(due) => inner.waiter.found_nothing(epoch, higher, due),
                    Err(e) => tracing::debug!(broker = %inner.url, "{e}"),
                }
            }
        }
        return Ok(first.map(Ahead::into_delivery));
    }
    Ok(None)
}

/// Whether any of `queues` has a ready event (a plain read), and when the
/// earliest one not ready yet is due.
async fn any_ready(inner: &Inner, queues: &[String]) -> Result<(bool, Option<i64>), Error> {
    sqlx::query_as(&inner.sql.any_ready)
        .bind(queues)
        .bind(now_i64())
        .fetch_one(&inner.pool)
        .await
        .map_err(|e| inner.err("take", e))
}

/// When the earliest not-yet-ready event of `queues` becomes ready.
async fn next_due(inner: &Inner, queues: &[String]) -> Result<Option<i64>, Error> {
    sqlx::query_scalar(&inner.sql.next_due)
        .bind(queues)
        .bind(now_i64())
        .fetch_one(&inner.pool)
        .await
        .map_err(|e| inner.err("take", e))
}
