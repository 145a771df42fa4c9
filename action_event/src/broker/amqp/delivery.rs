use std::sync::atomic::{AtomicBool, Ordering};

use lapin::message::Delivery as LapinDelivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use super::Inner;
use super::connection::OP_TIMEOUT;
use super::consume::{Origin, Slot};
use super::hold::drop_hold;
use super::tag::{Current, Tag};
use crate::broker::Delivery;
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
            ..
        } = d;
        let (unacked, in_hand) = match origin {
            Some(o) => (o.unacked, Some(o.in_hand)),
            None => (None, None),
        };
        let now = std::time::Instant::now();
        let tag = Tag {
            seq: 0,
            cur: tokio::sync::Mutex::new(Current {
                acker,
                hold: None,
                since: now,
                renewals: 0,
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
        if self.early(slot, &tag, &data).await {
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
        let sent = match tokio::time::timeout(OP_TIMEOUT, cur.acker.ack(BasicAckOptions::default()))
            .await
        {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err("already settled, or the channel was lost".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not sent in {OP_TIMEOUT:?}")),
        };
        tag.release_channel();
        if let Err(e) = sent {
            tracing::warn!(
                queue = %tag.full_queue, event = %tag.event_id(), error = %e,
                "ack failed: the broker will deliver the event again"
            );
        }
        // The event is settled: a copy left in its hold queue (its channel
        // was lost) must not come back, so the queue goes either way.
        if let Some((queue, ch)) = cur.hold.take() {
            drop_hold(queue, ch, true).await;
        }
    }

    pub(super) async fn settle_nack(&self, tag: &Tag) {
        self.finish(tag);
        let mut cur = tag.cur.lock().await;
        // A renewed event: rejecting the copy dead-letters it to its work
        // queue at once (the hold queue's dead-letter routing key).
        let requeue = cur.hold.is_none();
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            cur.acker.nack(BasicNackOptions {
                multiple: false,
                requeue,
            }),
        )
        .await;
        let sent = matches!(res, Ok(Ok(true)));
        tag.release_channel();
        if !sent {
            tracing::warn!(queue = %tag.full_queue, event = %tag.event_id(), "release not sent: the broker requeues the event when the channel closes");
        }
        if let Some((queue, ch)) = cur.hold.take() {
            // Not sent: the broker requeued the copy into its hold queue,
            // which dead-letters it within `HOLD_TTL`: keep the queue.
            drop_hold(queue, ch, sent).await;
        }
    }
}
