//! One queue on the consume side: its consumer, buffer and counters.
//!
//! Buffered events that are not handed out are returned (`nack`,
//! `requeue: true`) by `AmqpBroker::close`, when a level has not been
//! reached by any `take` for 5 s (its consumer is cancelled, so other
//! pollers can run them; its channel stays open until the events handed
//! out from it are settled or renewed, since closing it would requeue
//! them too), and by the broker itself when the connection or the broker
//! is dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use lapin::{Channel, Consumer};

use crate::broker::amqp::ack_batch::AckBatch;
use crate::broker::amqp::connection::OP_TIMEOUT;
use crate::broker::amqp::{Inner, lock};
/// Buffered events of a level no `take` reached for this long go back to the broker.
pub(super) const HOLD: Duration = Duration::from_secs(5);

/// `nack` back to the queue (spelled out: lapin's default does not requeue).
pub(super) const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

/// One queue on the consume side.
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) full: String,
    pub(super) st: Mutex<SlotState>,
    pub(super) check: tokio::sync::Mutex<()>,
    pub(super) sub_lock: tokio::sync::Mutex<()>,
}

pub(super) struct SlotState {
    pub(super) sub: Option<Sub>,
    pub(super) buf: VecDeque<LapinDelivery>,
    /// A check proved the broker holds nothing ready, and nothing arrived since.
    pub(super) clear: bool,
    pub(super) arrivals: u64,
    pub(super) last_reached: std::time::Instant,
    pub(super) last_settle: Option<std::time::Instant>,
    /// A check found this level not clear: until then, it is not checked
    /// again only to reach a lower level that has no consumer yet.
    pub(super) busy_until: Option<std::time::Instant>,
}

impl Slot {
    pub(super) fn new(name: String, full: String) -> Slot {
        Slot {
            name,
            full,
            st: Mutex::new(SlotState {
                sub: None,
                buf: VecDeque::new(),
                clear: false,
                arrivals: 0,
                last_reached: std::time::Instant::now(),
                last_settle: None,
                busy_until: None,
            }),
            check: tokio::sync::Mutex::new(()),
            sub_lock: tokio::sync::Mutex::new(()),
        }
    }
}

impl SlotState {
    /// A delivery of the current consumer: buffered and counted unacked.
    pub(super) fn arrived(&mut self, d: LapinDelivery) {
        if let Some(sub) = &self.sub {
            sub.unacked.fetch_add(1, Ordering::SeqCst);
        }
        self.buf.push_back(d);
        self.clear = false;
        self.arrivals += 1;
    }
}

#[derive(Clone)]
pub(super) struct Sub {
    pub(super) channel: Channel,
    pub(super) consumer: Consumer,
    /// The generation ([`ConsConn::id`](super::generation::ConsConn::id)) it was made in.
    pub(super) conn_id: u64,
    /// Its generation's `alive` flag.
    pub(super) alive: Arc<AtomicBool>,
    pub(super) unacked: Arc<AtomicUsize>,
    /// Deliveries of this channel handed out and not settled nor renewed:
    /// while there are any, the channel is not closed (that would requeue
    /// them, and they would run twice).
    pub(super) in_hand: Arc<AtomicUsize>,
    /// The acks of this channel, combined where exact (see `ack_batch`).
    pub(super) acks: Arc<AckBatch>,
}

/// Where a handed-out delivery came from: the counters of its consumer
/// channel.
pub(crate) struct Origin {
    /// The consumer's count of unacked deliveries (none for `basic.get`).
    pub(crate) unacked: Option<Arc<AtomicUsize>>,
    pub(crate) in_hand: Arc<AtomicUsize>,
    /// Its generation's `alive` flag.
    pub(crate) alive: Arc<AtomicBool>,
    /// The acks of its channel.
    pub(crate) acks: Arc<AckBatch>,
}

/// Consumers whose channel the broker closed (e.g. for `consumer_timeout`),
/// kept instead of dropped. lapin 4.12.3 with recovery on leaves such a
/// consumer active; dropping its last handle then asks lapin to cancel it on
/// a channel that no longer exists, which lapin takes for a *connection*
/// error: it reconnects, and the broker requeues every unacked delivery of
/// the whole connection (measured: the consume connection then stalled).
/// A few hundred bytes each; only the oldest beyond [`DEAD_CONSUMERS_MAX`]
/// are dropped.
static DEAD_CONSUMERS: Mutex<VecDeque<Consumer>> = Mutex::new(VecDeque::new());
const DEAD_CONSUMERS_MAX: usize = 4096;

/// Keeps the consumer of a channel closed under us (see [`DEAD_CONSUMERS`]).
fn keep_dead_consumer(consumer: Consumer) {
    let mut dead = lock(&DEAD_CONSUMERS);
    dead.push_back(consumer);
    while dead.len() > DEAD_CONSUMERS_MAX {
        dead.pop_front();
    }
}

/// Cancels a consumer, returns its buffered deliveries and closes its channel.
pub(super) async fn unsubscribe(sub: Option<Sub>, buf: VecDeque<LapinDelivery>) {
    let closed_under_us = sub.as_ref().is_some_and(|s| {
        let st = s.channel.status();
        !st.connected() && !st.reconnecting() && !st.initializing()
    });
    if let Some(sub) = &sub
        && sub.channel.status().connected()
    {
        let _ = tokio::time::timeout(
            OP_TIMEOUT,
            sub.channel
                .basic_cancel(sub.consumer.tag(), BasicCancelOptions::default()),
        )
        .await;
    }
    for d in buf {
        if d.acker.usable() {
            let _ = tokio::time::timeout(OP_TIMEOUT, d.acker.nack(REQUEUE)).await;
        }
    }
    if let Some(sub) = sub {
        // Return what arrived between cancel and now.
        let mut consumer = sub.consumer.clone();
        while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
            let _ = d.acker.nack(REQUEUE).await;
        }
        // Events handed out from this channel and still running keep it
        // open: closing it would make the broker requeue them, and they
        // would run twice (a poller whose slots are all busy with long
        // events reaches no `take` for `HOLD`, and the reaper returns its
        // buffered events). It is closed once they are settled or renewed.
        if sub.channel.status().connected() && sub.in_hand.load(Ordering::SeqCst) > 0 {
            tokio::spawn(async move {
                while sub.channel.status().connected() && sub.in_hand.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                close_sub(sub, closed_under_us).await;
            });
            return;
        }
        close_sub(sub, closed_under_us).await;
    }
}

/// Closes an unsubscribed consumer's channel: the broker requeues whatever
/// is still unacked on it.
async fn close_sub(sub: Sub, closed_under_us: bool) {
    let _ = tokio::time::timeout(OP_TIMEOUT, sub.channel.close(200, "OK".into())).await;
    if closed_under_us {
        keep_dead_consumer(sub.consumer);
    }
}

/// Returns buffered deliveries of levels no `take` reached for [`HOLD`].
pub(crate) async fn reaper(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let slots: Vec<Arc<Slot>> = lock(&inner.consume.slots).values().cloned().collect();
        drop(inner);
        for slot in slots {
            let Ok(_g) = slot.sub_lock.try_lock() else {
                continue;
            };
            let taken = {
                let mut st = lock(&slot.st);
                if st.sub.is_some() && !st.buf.is_empty() && st.last_reached.elapsed() > HOLD {
                    st.clear = false;
                    Some((st.sub.take(), std::mem::take(&mut st.buf)))
                } else {
                    None
                }
            };
            if let Some((sub, buf)) = taken {
                tracing::debug!(queue = %slot.name, n = buf.len(), "returning buffered events of an unreached level");
                unsubscribe(sub, buf).await;
            }
        }
    }
}

impl Inner {
    /// Moves every delivery already received by the consumer into the buffer.
    pub(super) fn drain(st: &mut SlotState) {
        loop {
            let Some(sub) = st.sub.as_mut() else { return };
            match sub.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => st.arrived(d),
                Some(Some(Err(e))) => {
                    // lapin errs a consumer when its channel or connection
                    // fails, then ends it: it is done either way.
                    tracing::debug!(error = %e, "consumer error; subscribing again");
                    st.sub = None;
                    st.clear = false;
                    return;
                }
                Some(None) => {
                    // Cancelled (queue deleted, channel closed): resubscribe later.
                    st.sub = None;
                    st.clear = false;
                    return;
                }
                None => return,
            }
        }
    }

    pub(super) fn pop(st: &mut SlotState) -> Option<LapinDelivery> {
        while let Some(d) = st.buf.pop_front() {
            if d.acker.usable() {
                return Some(d);
            }
        }
        None
    }

    pub(super) fn is_full(&self, st: &SlotState) -> bool {
        st.sub
            .as_ref()
            .is_some_and(|s| s.unacked.load(Ordering::SeqCst) >= usize::from(self.opts.prefetch))
    }
}
