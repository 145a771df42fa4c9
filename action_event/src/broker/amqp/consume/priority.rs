//! Strict priority between the queues of one `take`.
//!
//! - Each queue gets its own consumer (own channel, `prefetch` unacked)
//!   feeding a local buffer; a lower queue is subscribed only once a `take`
//!   actually reaches its level. `take` serves the highest non-empty buffer.
//! - Before an event of level *i* is handed out, every higher level *j*
//!   must be *clear*: its buffer empty and the broker holding nothing ready
//!   for it. Proving that is a **check** on *j*'s own channel: `basic.get`
//!   (a hit is a level-*j* event and is served instead), then a passive
//!   `queue.declare` as a barrier: the broker sends every delivery it pushed
//!   to our consumer before that reply, and lapin has put them into the
//!   consumer's stream before the reply resolves, so after draining the
//!   stream an empty buffer means nothing of level *j* was in flight either.
//!   This also covers backlog present before the poller starts (the first
//!   check on a new consumer waits out its initial deliveries).
//! - The check result is cached ("clear") until a delivery for *j* arrives,
//!   and it is not cached when *j*'s consumer was at its prefetch limit (the
//!   broker may then hold ready messages it cannot push). So checks happen
//!   when switching down a level, not per event: a steady stream of medium
//!   events while high is idle costs no extra round trip, and a new high
//!   event is pushed by the broker at once and served next.
//! - A level is checked only when there is something to go down for: a
//!   lower level has events buffered, or has no consumer yet (reaching it
//!   subscribes it; then at most once per 100 ms while the level above is
//!   found busy). Otherwise an empty buffer just waits for the broker's next
//!   push: a check is a round trip through the busiest queue.
//!
//! Guarantee: within one process, an event is handed out only if every
//! higher queue was empty in the broker at a moment after the previous event
//! of that higher queue arrived. Across processes it is strict *at dequeue*:
//! a process's buffered-but-not-started events count as taken, so start
//! order between two pollers can differ by at most the events a poller has
//! buffered beyond its free slots; keep `prefetch` at or below the poller's
//! concurrency to keep that near zero. When the check sees other consumers on
//! the higher queue, the switch down first waits 10 ms (at most once per
//! second per queue) so that events other pollers already hold start first.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Consumer;
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::time::Instant;

use super::Pick;
use super::generation::ConsConn;
use super::slot::{Origin, REQUEUE, Slot};
use crate::Error;
use crate::broker::amqp::connection::OP_TIMEOUT;
use crate::broker::amqp::{Inner, lock};
/// How long a switch down waits for other pollers' already-delivered events.
const SETTLE: Duration = Duration::from_millis(10);
/// At most one settle wait per queue in this interval.
const SETTLE_EVERY: Duration = Duration::from_secs(1);

/// After a check found a level not clear, how long it is not checked again
/// only to reach (subscribe) a lower level (see `select`).
const RECHECK: Duration = Duration::from_millis(100);

enum Check {
    /// `basic.get` found an event of this level.
    Got(Box<LapinDelivery>, Origin),
    /// Something arrived in the buffer meanwhile: decide again.
    Retry,
    /// Nothing ready for this level: lower levels may be served.
    Clear,
    /// Could not tell (connection trouble): do not go lower.
    Unknown,
}

impl Inner {
    /// Proves that `slot` has nothing ready in the broker (see module docs).
    async fn check(&self, slot: &Arc<Slot>) -> Check {
        let _g = slot.check.lock().await;
        let (sub, arrivals) = {
            let mut st = lock(&slot.st);
            Self::drain(&mut st);
            if !st.buf.is_empty() {
                return Check::Retry;
            }
            if st.clear {
                return Check::Clear;
            }
            match st.sub.clone() {
                Some(s) => (s, st.arrivals),
                None => return Check::Unknown,
            }
        };
        for _ in 0..3 {
            match tokio::time::timeout(
                OP_TIMEOUT,
                sub.channel
                    .basic_get(slot.full.as_str().into(), BasicGetOptions { no_ack: false }),
            )
            .await
            {
                Ok(Ok(Some(m))) => {
                    lock(&slot.st).busy_until = Some(std::time::Instant::now() + RECHECK);
                    let origin = Origin {
                        unacked: None,
                        in_hand: sub.in_hand.clone(),
                        alive: sub.alive.clone(),
                        acks: sub.acks.clone(),
                    };
                    return Check::Got(Box::new(m.delivery), origin);
                }
                Ok(Ok(None)) => {}
                _ => return Check::Unknown,
            }
            // Barrier: deliveries pushed before this reply are in the stream now.
            let q = match tokio::time::timeout(
                OP_TIMEOUT,
                sub.channel.queue_declare(
                    slot.full.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            {
                Ok(Ok(q)) => q,
                _ => return Check::Unknown,
            };
            let settle = {
                let mut st = lock(&slot.st);
                Self::drain(&mut st);
                if !st.buf.is_empty() {
                    return Check::Retry;
                }
                if q.message_count() > 0 {
                    continue;
                }
                // Other pollers share this queue: give the events they
                // already hold a moment to start before we go lower (at
                // most once per second per queue, so it costs nothing in
                // steady state).
                let due = st.last_settle.is_none_or(|t| t.elapsed() > SETTLE_EVERY);
                if q.consumer_count() > 1 && due {
                    st.last_settle = Some(std::time::Instant::now());
                    true
                } else {
                    if !self.is_full(&st) && st.arrivals == arrivals {
                        st.clear = true;
                    }
                    return Check::Clear;
                }
            };
            if settle {
                tokio::time::sleep(SETTLE).await;
                let mut st = lock(&slot.st);
                Self::drain(&mut st);
                if !st.buf.is_empty() {
                    return Check::Retry;
                }
                if !self.is_full(&st) && st.arrivals == arrivals {
                    st.clear = true;
                }
                return Check::Clear;
            }
        }
        Check::Unknown
    }

    /// One pass over the levels, highest first.
    pub(super) async fn select(&self, slots: &[Arc<Slot>], cons: &ConsConn) -> Result<Pick, Error> {
        let mut poll_soon = false;
        for (i, slot) in slots.iter().enumerate() {
            if !self.ensure_sub(slot, cons).await? {
                return Ok(Pick::Wait { poll_soon: true });
            }
            let (popped, more, full) = {
                let mut st = lock(&slot.st);
                Self::drain(&mut st);
                st.last_reached = std::time::Instant::now();
                let d = Self::pop(&mut st).map(|d| {
                    let origin = st.sub.as_ref().map(|s| Origin {
                        unacked: Some(s.unacked.clone()),
                        in_hand: s.in_hand.clone(),
                        alive: s.alive.clone(),
                        acks: s.acks.clone(),
                    });
                    (d, origin)
                });
                (d, !st.buf.is_empty(), self.is_full(&st))
            };
            if let Some((d, origin)) = popped {
                if more {
                    // Wakes the takers that wait now (every `take` registers
                    // before it looks); unlike `notify_one` it leaves no
                    // permit behind for a later wait to trip over.
                    self.consume.notify.notify_waiters();
                }
                return Ok(Pick::Got(slot.clone(), Box::new(d), origin));
            }
            poll_soon |= full;
            let last = i + 1 == slots.len();
            if last && !full {
                break;
            }
            // A check is a round trip through this level's queue, which is
            // busy delivering when it has a backlog (~0.8 ms measured), and
            // it only serves to hand out an event of a lower level, or to
            // reach a lower level not subscribed yet. So it is skipped while
            // no lower level has anything buffered and either every lower
            // level is subscribed or this level was found not clear within
            // `RECHECK`: the take waits for an arrival (or `poll_soon`)
            // instead. Checking on every empty buffer cost a drain of a
            // `medium` backlog over half its time (a check per ~25 events).
            if !full {
                let (mut buffered, mut unreached) = (false, false);
                for lower in &slots[i + 1..] {
                    let mut st = lock(&lower.st);
                    Self::drain(&mut st);
                    buffered |= !st.buf.is_empty();
                    unreached |= st.sub.is_none();
                }
                if !buffered && !unreached {
                    break;
                }
                let busy = lock(&slot.st)
                    .busy_until
                    .is_some_and(|t| std::time::Instant::now() < t);
                if !buffered && busy {
                    poll_soon = true;
                    break;
                }
            }
            match self.check(slot).await {
                Check::Got(d, origin) => {
                    return Ok(Pick::Got(slot.clone(), d, Some(origin)));
                }
                Check::Retry => return Ok(Pick::Retry),
                Check::Clear => {}
                Check::Unknown => return Ok(Pick::Wait { poll_soon: true }),
            }
        }
        Ok(Pick::Wait { poll_soon })
    }

    /// Waits for a delivery on any of `slots`, a notification, or `until`.
    pub(super) async fn wait_for_work(
        &self,
        slots: &[Arc<Slot>],
        notified: Pin<&mut tokio::sync::futures::Notified<'_>>,
        until: Instant,
    ) {
        // Created before the pump is tried, so a release after a failed
        // try is never missed.
        let pump_free = self.consume.pump_free.notified();
        let Ok(pump) = self.consume.pump.try_lock() else {
            tokio::select! {
                _ = notified => {}
                _ = pump_free => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            return;
        };
        let mut watched: Vec<(Arc<Slot>, Consumer, ShortString)> = slots
            .iter()
            .filter_map(|s| {
                let st = lock(&s.st);
                st.sub
                    .as_ref()
                    .map(|sub| (s.clone(), sub.consumer.clone(), sub.consumer.tag()))
            })
            .collect();
        if watched.is_empty() {
            let _ = tokio::time::timeout_at(until, notified).await;
        } else {
            let arrival = poll_fn(|cx| {
                for (slot, consumer, tag) in watched.iter_mut() {
                    let mut st = lock(&slot.st);
                    match consumer.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(d))) => {
                            match st.sub.as_ref().filter(|s| s.consumer.tag() == *tag) {
                                Some(_) => st.arrived(d),
                                None => {
                                    tokio::spawn(async move {
                                        let _ = d.acker.nack(REQUEUE).await;
                                    });
                                }
                            }
                            return Poll::Ready(());
                        }
                        Poll::Ready(end) => {
                            // An error or the end: the consumer is done
                            // (see `drain`); the next `take` subscribes again.
                            if let Some(Err(e)) = end {
                                tracing::debug!(error = %e, "consumer error; subscribing again");
                            }
                            if st.sub.as_ref().is_some_and(|s| s.consumer.tag() == *tag) {
                                st.sub = None;
                                st.clear = false;
                            }
                            return Poll::Ready(());
                        }
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                _ = arrival => {}
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        drop(pump);
        // Tasks that wait without the pump look again; one of them takes
        // it over. `notify_waiters` keeps no permit: the `notify_one` that
        // was here left one behind whenever no other task waited (a dropped
        // `Notified` passes an unreceived `notify_one` on), so the next wait
        // returned at once and left it again: waits that never waited.
        self.consume.pump_free.notify_waiters();
    }
}
