//! Handing an event out, and settling it: `ack` (after `retry` and `dead`
//! too) and `release`.
//!
//! An ack or nack is not sent when its consume generation is gone, and a
//! wait for one ends as soon as it goes (see `connection`, *Connection
//! loss*): a stop never waits on an ack to a connection that is gone.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::message::Delivery as LapinDelivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::time::Instant;

use super::Inner;
use super::ack_batch::Plan;
use super::connection::OP_TIMEOUT;
use super::consume::{Origin, Slot};
use super::hold::drop_hold;
use super::tag::{Current, Tag};
use crate::broker::Delivery;

/// While an ack or nack is not sent yet, whether its connection is gone is
/// looked at this often.
const GONE_CHECK: Duration = Duration::from_millis(100);

/// How sending an ack or nack went.
enum Sent {
    Yes,
    /// Its connection is gone: not sent, the broker delivers the event again.
    Gone,
    Failed(String),
}

/// Sends an ack or nack (`fut`, on `cur.acker`) unless `cur`'s connection
/// is gone; gives up as soon as it goes, or after [`OP_TIMEOUT`].
async fn send(cur: &Current, fut: impl Future<Output = lapin::Result<bool>>) -> Sent {
    if cur.gone() {
        return Sent::Gone;
    }
    tokio::pin!(fut);
    let deadline = Instant::now() + OP_TIMEOUT;
    loop {
        match tokio::time::timeout(GONE_CHECK, &mut fut).await {
            Ok(Ok(true)) => return Sent::Yes,
            _ if cur.gone() => return Sent::Gone,
            Ok(Ok(false)) => {
                return Sent::Failed("already settled, or the channel was lost".to_string());
            }
            Ok(Err(e)) => return Sent::Failed(e.to_string()),
            Err(_) if Instant::now() >= deadline => {
                return Sent::Failed(format!("not sent in {OP_TIMEOUT:?}"));
            }
            Err(_) => {}
        }
    }
}

/// Sends the ack of `cur`, combined with others of its channel where exact
/// (see `ack_batch`).
async fn ack(cur: &Current) -> Sent {
    let Some((batch, t)) = cur.batch.as_ref().filter(|_| cur.hold.is_none()) else {
        return send(cur, cur.acker.ack(BasicAckOptions::default())).await;
    };
    if cur.gone() {
        return Sent::Gone;
    }
    match batch.gather(*t).await {
        Plan::Alone => {
            let sent = send(cur, cur.acker.ack(BasicAckOptions::default())).await;
            if matches!(sent, Sent::Yes) {
                batch.sent(*t);
            }
            sent
        }
        Plan::Combined(combined) => {
            let sent = send(cur, cur.acker.ack(BasicAckOptions { multiple: true })).await;
            combined.finish(matches!(sent, Sent::Yes));
            sent
        }
        Plan::Carried(rx) => match rx.await {
            Ok(true) => Sent::Yes,
            _ if cur.gone() => Sent::Gone,
            _ => Sent::Failed("the ack that carried it was not sent".to_string()),
        },
    }
}

impl Inner {
    /// Turns a lapin delivery into ours, or sends it through the delay
    /// ladder again when it came back before its time.
    pub(super) async fn hand_out(
        &self,
        slot: &Slot,
        d: LapinDelivery,
        origin: Option<Origin>,
    ) -> Option<Delivery> {
        let LapinDelivery {
            data,
            acker,
            redelivered,
            properties,
            delivery_tag,
            ..
        } = d;
        let (unacked, in_hand, alive, batch) = match origin {
            Some(o) => (
                o.unacked,
                Some(o.in_hand),
                Some(o.alive),
                Some((o.acks, delivery_tag)),
            ),
            None => (None, None, None, None),
        };
        let now = std::time::Instant::now();
        let tag = Tag {
            seq: 0,
            cur: tokio::sync::Mutex::new(Current {
                acker,
                hold: None,
                since: now,
                renewals: 0,
                alive,
                batch,
            }),
            counted: AtomicBool::new(true),
            held_open: AtomicBool::new(true),
            unacked,
            in_hand: in_hand.inspect(|n| {
                n.fetch_add(1, Ordering::SeqCst);
            }),
            done: AtomicBool::new(false),
            renewing: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            queue: slot.name.clone(),
            full_queue: slot.full.clone(),
            properties,
            body: data.clone(),
            taken: now,
        };
        if self.poisoned(&slot.name, &tag, &data).await || self.early(slot, &tag, &data).await {
            return None;
        }
        let tag = self.register(tag);
        Some(Delivery {
            queue: slot.name.clone(),
            body: data,
            redelivered,
            tag: Box::new(tag),
        })
    }

    pub(super) async fn settle_ack(&self, tag: &Tag) {
        self.finish(tag);
        let mut cur = tag.cur.lock().await;
        let sent = ack(&cur).await;
        tag.release_channel();
        let gone = matches!(sent, Sent::Gone);
        match sent {
            Sent::Yes => {}
            Sent::Gone => {
                self.link.unsent();
                tracing::debug!(
                    queue = %tag.full_queue, event = %tag.event_id(),
                    "ack not sent: the connection is gone; the broker delivers the event again"
                );
            }
            Sent::Failed(e) => tracing::warn!(
                queue = %tag.full_queue, event = %tag.event_id(), error = %e,
                "ack failed: the broker will deliver the event again"
            ),
        }
        // The event is settled: a copy left in its hold queue (its channel
        // was lost) must not come back, so the queue goes either way; with
        // the connection gone nothing can be sent (the copy comes back, as
        // an unacked delivery would).
        if let Some((queue, ch)) = cur.hold.take() {
            if gone {
                drop((queue, ch));
            } else {
                drop_hold(queue, ch, true).await;
            }
        }
        drop(cur);
        self.settled();
    }

    pub(super) async fn settle_nack(&self, tag: &Tag) {
        self.finish(tag);
        let mut cur = tag.cur.lock().await;
        // A renewed event: rejecting the copy dead-letters it to its work
        // queue at once (the hold queue's dead-letter routing key).
        let requeue = cur.hold.is_none();
        let res = send(
            &cur,
            cur.acker.nack(BasicNackOptions {
                multiple: false,
                requeue,
            }),
        )
        .await;
        let (sent, gone) = (matches!(res, Sent::Yes), matches!(res, Sent::Gone));
        if sent
            && cur.hold.is_none()
            && let Some((batch, t)) = &cur.batch
        {
            batch.nacked(*t);
        }
        tag.release_channel();
        if gone {
            self.link.unsent();
            tracing::debug!(queue = %tag.full_queue, event = %tag.event_id(), "release not sent: the connection is gone; the broker requeued the event");
        } else if !sent {
            tracing::warn!(queue = %tag.full_queue, event = %tag.event_id(), "release not sent: the broker requeues the event when the channel closes");
        }
        if let Some((queue, ch)) = cur.hold.take() {
            // Not sent: the broker requeued the copy into its hold queue,
            // which dead-letters it within `HOLD_TTL`: keep the queue.
            if gone {
                drop((queue, ch));
            } else {
                drop_hold(queue, ch, sent).await;
            }
        }
        drop(cur);
        self.settled();
    }
}
