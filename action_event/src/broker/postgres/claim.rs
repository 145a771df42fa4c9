//! Taking events: [`Broker::take`](crate::broker::Broker::take).
//!
//! # Claim
//!
//! An event row is *ready* when `visible_at <= now`. A take looks at the
//! queues in the order given (strict priority) and claims the first ready
//! row of the first queue that has one, in one statement:
//! `UPDATE .. WHERE id = (SELECT .. ORDER BY visible_at, id LIMIT 1 FOR
//! UPDATE SKIP LOCKED)`, which sets the lease, a fresh claim token and the
//! owner ([`super::owner`]). `SKIP LOCKED` lets any number of pollers
//! claim at once without waiting for each other, and never hands one row
//! to two of them. Each lookup is one probe of the index
//! `events(queue, visible_at, id)`: the cost does not grow with the number
//! of events waiting.
//!
//! Within one broker, claims run one at a time, so deliveries are handed
//! out in the order they were claimed: a poller never starts a `medium`
//! event after claiming a `high` one that it has not handed out yet.
//!
//! # Waiting
//!
//! A take that finds nothing sleeps until a `NOTIFY` (the insert trigger,
//! see [`super::schema`]) wakes it, until the earliest delayed or retried
//! event of its queues is due, or at most `poll` (a safety net for leases
//! that lapse), whichever comes first; never longer than its `wait`. Idle
//! pollers thus cost nothing between events, and a delayed event does not
//! hold back the others (each is ordered by its own `visible_at`). One
//! notification wakes one waiting take of a broker; a take that then
//! claims an event wakes the next, so a burst is taken by every free slot.

use std::time::{Duration, Instant};

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

/// Takes the next ready event of `queues` (strict priority), waiting up to
/// `wait` for one.
pub(super) async fn take(
    inner: &Inner,
    queues: &[String],
    wait: Duration,
) -> Result<Option<Delivery>, Error> {
    let start = Instant::now();
    let mut waited = false;
    loop {
        if let Some(d) = claim_once(inner, queues).await? {
            if waited {
                // More may have come with the notification that woke us.
                inner.wake.notify_one();
            }
            return Ok(Some(d));
        }
        let elapsed = start.elapsed();
        if elapsed >= wait {
            return Ok(None);
        }
        let mut sleep = (wait - elapsed).min(inner.cfg.poll);
        if let Some(due) = next_due(inner, queues).await? {
            let until = Duration::from_millis(u64::try_from(due - now_i64()).unwrap_or(0));
            sleep = sleep.min(until + Duration::from_millis(1));
        }
        let _ = tokio::time::timeout(sleep, inner.wake.notified()).await;
        waited = true;
    }
}

/// One claim over `queues`, in order.
async fn claim_once(inner: &Inner, queues: &[String]) -> Result<Option<Delivery>, Error> {
    let _one_at_a_time = inner.claiming.lock().await;
    let now = now_i64();
    let until = now.saturating_add(inner.lease_ms());
    let claim: i64 = rand::random();
    for queue in queues {
        let row: Option<(i64, String, String, i32)> = sqlx::query_as(&inner.sql.claim)
            .bind(queue)
            .bind(now)
            .bind(until)
            .bind(claim)
            .bind(inner.owner)
            .fetch_optional(&inner.pool)
            .await
            .map_err(|e| inner.err("take", e))?;
        if let Some((row, event_id, body, deliveries)) = row {
            inner.held().insert(row);
            return Ok(Some(Delivery {
                queue: queue.clone(),
                body: body.into_bytes(),
                redelivered: deliveries > 1,
                tag: Box::new(Tag {
                    row,
                    claim,
                    event_id,
                }),
            }));
        }
    }
    Ok(None)
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
