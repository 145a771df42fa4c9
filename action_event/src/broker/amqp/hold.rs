//! Long events: renewal through hold queues.
//!
//! # Long events: RabbitMQ's `consumer_timeout`
//!
//! RabbitMQ (3.8.15+) closes a channel with `PRECONDITION_FAILED` when one
//! of its deliveries stays unacked longer than `consumer_timeout` (30 min by
//! default; on 3.10 a global `rabbitmq.conf` setting) and requeues *every*
//! unacked delivery of that channel, so the other events in flight on it
//! would run again too. Measured on 3.10.8: `basic.get` deliveries count as
//! well, and the check runs on the channel's tick (`channel_tick_interval`,
//! 60 s by default), so the channel closes between `consumer_timeout` and
//! `consumer_timeout` + 60 s after the delivery.
//!
//! So no delivery of this backend stays unacked that long: when a handed-out
//! event is still running a third of the URL's `consumer_timeout` after it
//! was handed out (or last renewed), a renewer task (ticking every
//! `consumer_timeout / 12`, at most every second) *renews* it:
//!
//! 1. on a channel of the consume connection kept for this event, declare
//!    the durable queue `<prefix>hold.<event id>.<nonce>` (`nonce`: random,
//!    one per hand-out) with `x-message-ttl` = 10 s,
//!    `x-dead-letter-exchange` = `""`, `x-dead-letter-routing-key` =
//!    `<prefix><queue>` and `x-expires` = 2 x `consumer_timeout` + 60 s;
//! 2. publish a copy of the message there (confirmed, on the publish
//!    connection, `x-death` headers stripped, `expiration` = 10 s as well:
//!    see `wire::expiring_properties`);
//! 3. `basic.get` it (unacked) on the event's channel: the copy is now the
//!    event's delivery, with a fresh broker clock;
//! 4. ack the previous delivery (the consumer's, or the previous copy).
//!
//! Renewals repeat every third of `consumer_timeout` with the same queue
//! and channel. A lock per delivery keeps renewals and
//! `ack`/`retry`/`dead`/`release` apart. Settling a renewed event settles
//! the copy, then deletes the hold queue and closes its channel; `release`
//! rejects the copy without requeue, which dead-letters it to its work
//! queue at once. If the poller dies, the broker requeues the
//! unacked copy into the hold queue, where its TTL has run out (or runs out
//! within 10 s), and dead-letters it back to `<prefix><queue>`: another
//! poller runs it (at least once; it arrives with `redelivered = false` and
//! an `x-death` header). A crash in the middle of a renewal leaves two
//! copies: the event runs again, never is lost. `x-expires` only cleans up
//! after crashes: RabbitMQ deletes an unused queue even while it holds an
//! unacked message (measured), so it is kept well above the renewal period.
//! Limits: renewals are timed from the hand-out, while the broker's clock
//! starts when it pushed the delivery to the consumer (buffered deliveries
//! wait at most a few seconds, see *Strict priority*); and the way back after
//! a crash is RabbitMQ's own dead-lettering, which is not confirmed
//! internally on classic queues (a broker crash at that moment could lose
//! the event). With `queue_type=quorum` hold queues are quorum queues that
//! dead-letter at-least-once (see `topology::expiring_args`), which closes
//! that hole.
//!
//! If the broker closes a channel anyway (its `consumer_timeout` is lower
//! than the URL's, or a renewal kept failing), the consume side resubscribes
//! on a new channel and goes on; the renewer logs a warning naming each
//! event whose delivery was lost that way (they run again), and the ack of
//! the first run is reported as not sent. The closed channel's consumer is
//! kept, not dropped: with lapin 4.12.3 dropping it would make lapin
//! reconnect the whole consume connection (see `DEAD_CONSUMERS`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::time::Instant;

use super::connection::{OP_TIMEOUT, TopoErr, op};
use super::tag::Tag;
use super::wire::{copy_properties, expiring_properties, i64_of, long_str, ms};
use super::{Inner, lock};
/// `x-message-ttl` of a hold queue: how long a renewal copy may wait to be
/// fetched, and at most how long it stays there after its poller died.
const HOLD_TTL: Duration = Duration::from_secs(10);
/// RabbitMQ's default `channel_tick_interval`: it checks `consumer_timeout`
/// that often.
const BROKER_TICK: Duration = Duration::from_secs(60);

/// Handed-out deliveries not settled yet, for the renewer (and for the
/// count of acks not sent, logged once the last is settled after a stop).
pub(super) struct Holds {
    held: Mutex<HashMap<u64, Weak<Tag>>>,
    /// Keys of `held` (0 is "not registered").
    seq: AtomicU64,
    /// The poller takes no more (`Broker::give_back`).
    stopping: AtomicBool,
}

impl Holds {
    pub(super) fn new() -> Holds {
        Holds {
            held: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }
}

/// Deletes a settled event's hold queue (when `delete`) and closes its channel.
pub(super) async fn drop_hold(queue: String, ch: Channel, delete: bool) {
    if delete
        && let Err(e) = op(
            "delete the hold queue",
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
    {
        let m = match e {
            TopoErr::Fatal(e) => e.to_string(),
            TopoErr::Transient(m) => m,
        };
        tracing::debug!(hold = %queue, error = %m, "hold queue not deleted; it expires by itself");
    }
    let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
}

/// Renews handed-out deliveries that run long, and reports those whose
/// channel was lost meanwhile (see *Long events* in the module docs).
pub(super) async fn renewer(inner: Weak<Inner>) {
    let (every, renew_after, timeout) = match inner.upgrade() {
        Some(i) => (
            (i.opts.consumer_timeout / 12).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            i.opts.consumer_timeout / 3,
            i.opts.consumer_timeout,
        ),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let tags: Vec<Arc<Tag>> = {
            let mut held = lock(&inner.holds.held);
            held.retain(|_, t| t.strong_count() > 0);
            held.values().filter_map(Weak::upgrade).collect()
        };
        for tag in tags {
            if tag.done.load(Ordering::SeqCst)
                || tag.lost.load(Ordering::SeqCst)
                || tag.renewing.load(Ordering::SeqCst)
            {
                continue;
            }
            let Ok(cur) = tag.cur.try_lock() else {
                continue;
            };
            let (usable, age, gone) = (cur.acker.usable(), cur.since.elapsed(), cur.gone());
            drop(cur);
            if gone {
                // Its connection is gone: reported once for all (see
                // `recover::Link`); the broker delivers it again.
                tag.lost.store(true, Ordering::SeqCst);
                continue;
            }
            if !usable {
                if !tag.done.load(Ordering::SeqCst) && !tag.lost.swap(true, Ordering::SeqCst) {
                    let (id, name) = tag.ident();
                    tracing::warn!(
                        event = %id, queue = %tag.queue,
                        "event {} ({}) lost its RabbitMQ delivery while running ({:?} after it was taken, its delivery {age:?} old): \
                         the channel closed and the broker requeued it, so it will run again. If the broker's log says \
                         `delivery acknowledgement on channel N timed out`, its consumer_timeout is below the URL's \
                         `consumer_timeout` ({timeout:?}): set that option to the broker's value",
                        id, name, tag.taken.elapsed()
                    );
                }
                continue;
            }
            if age < renew_after {
                continue;
            }
            tag.renewing.store(true, Ordering::SeqCst);
            let inner = inner.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.renew(&tag).await {
                    let (id, name) = tag.ident();
                    tracing::warn!(
                        event = %id, queue = %tag.queue, error = %e,
                        "cannot renew the delivery of long event {id} ({name}) yet; trying again (RabbitMQ closes its channel once it is unacked for consumer_timeout)"
                    );
                }
                tag.renewing.store(false, Ordering::SeqCst);
            });
        }
    }
}

impl Inner {
    /// Marks a delivery settled: it leaves the renewer and the prefetch
    /// count. (It leaves its channel's in-hand count once its ack or nack is
    /// sent: until then the channel must stay open.)
    pub(super) fn finish(&self, tag: &Tag) {
        tag.done.store(true, Ordering::SeqCst);
        tag.uncount();
        if tag.seq != 0 {
            lock(&self.holds.held).remove(&tag.seq);
        }
    }

    /// The poller takes no more (`Broker::give_back`): once the events in
    /// hand are settled, the acks and releases that could not be sent
    /// (their connection was gone) are logged once, with their count.
    pub(super) fn stop_taking(&self) {
        self.holds.stopping.store(true, Ordering::SeqCst);
        self.settled();
    }

    /// After a settle: once stopping, the last one reports the acks not sent.
    pub(super) fn settled(&self) {
        if self.holds.stopping.load(Ordering::SeqCst)
            && lock(&self.holds.held)
                .values()
                .all(|t| t.strong_count() == 0)
        {
            self.link.report_unsent();
        }
    }

    /// Registers a handed-out delivery with the renewer.
    pub(super) fn register(&self, mut tag: Tag) -> Arc<Tag> {
        tag.seq = self.holds.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let tag = Arc::new(tag);
        lock(&self.holds.held).insert(tag.seq, Arc::downgrade(&tag));
        tag
    }

    /// Moves a long-running event to a fresh delivery (see *Long events* in
    /// the module docs): a copy in its hold queue, fetched unacked on the
    /// event's own channel, then the previous delivery is acked.
    async fn renew(&self, tag: &Tag) -> Result<(), String> {
        let mut cur = tag.cur.lock().await;
        if tag.done.load(Ordering::SeqCst) || !cur.acker.usable() || cur.gone() {
            return Ok(());
        }
        let cons = self
            .cons_conn()
            .await
            .ok_or_else(|| "the consume connection is down".to_string())?;
        let text = |e: TopoErr| match e {
            TopoErr::Fatal(e) => e.to_string(),
            TopoErr::Transient(m) => m,
        };
        let (queue, ch) = match &cur.hold {
            Some((q, c)) => (q.clone(), c.clone()),
            None => {
                let ch = op("open a hold channel", cons.conn.create_channel())
                    .await
                    .map_err(text)?;
                (self.hold_name(tag), ch)
            }
        };
        let fetched = async {
            let mut args = self.expiring_args(ms(HOLD_TTL));
            args.insert(
                "x-dead-letter-routing-key".into(),
                long_str(&tag.full_queue),
            );
            args.insert(
                "x-expires".into(),
                i64_of(ms(self.opts.consumer_timeout * 2 + BROKER_TICK)),
            );
            op(
                "declare the hold queue",
                ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args),
            )
            .await
            .map_err(text)?;
            self.publish_copy(&queue, &tag.body, copy_properties(&tag.properties))
                .await?;
            match op(
                "fetch the copy",
                ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }),
            )
            .await
            .map_err(text)?
            {
                Some(m) => Ok(m.delivery.acker),
                None => Err(format!(
                    "the copy left `{queue}` before it could be fetched: it goes back to `{}` and the event runs again",
                    tag.full_queue
                )),
            }
        }
        .await;
        let acker = match fetched {
            Ok(a) => a,
            Err(e) => {
                if cur.hold.is_none() {
                    let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
                }
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut cur.acker, acker);
        // The old delivery is acked below on its own; the copy is not on
        // the consumer channel.
        cur.batch = None;
        let age = cur.since.elapsed();
        if cur.hold.is_none() {
            // The copy is unacked on a channel of the current generation.
            cur.alive = Some(cons.alive.clone());
        }
        cur.hold = Some((queue.clone(), ch));
        cur.since = std::time::Instant::now();
        cur.renewals += 1;
        let acked = matches!(
            tokio::time::timeout(OP_TIMEOUT, old.ack(BasicAckOptions::default())).await,
            Ok(Ok(true))
        );
        tag.uncount();
        tag.release_channel();
        match acked {
            true => tracing::debug!(
                event = %tag.event_id(), queue = %tag.queue, hold = %queue, renewals = cur.renewals,
                "renewed a long event's delivery after {age:?} (consumer_timeout {:?})", self.opts.consumer_timeout
            ),
            false => {
                let (id, name) = tag.ident();
                tracing::warn!(
                    event = %id, queue = %tag.queue,
                    "renewed event {id} ({name}), but its previous delivery could not be acked: the event will run again"
                )
            }
        }
        Ok(())
    }

    /// `<prefix>hold.<event id>.<nonce>`, within RabbitMQ's 255 bytes.
    fn hold_name(&self, tag: &Tag) -> String {
        let id: String = tag
            .event_id()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(40)
            .collect();
        // The last hex digits of a v7 UUID are random.
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        format!("{}hold.{id}.{}", self.opts.prefix, &nonce[24..])
    }

    /// Publishes a renewal copy straight to its hold queue, confirmed (one
    /// attempt: the renewer tries again on its next tick).
    async fn publish_copy(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), String> {
        let deadline = Instant::now() + OP_TIMEOUT.min(self.opts.publish_timeout);
        let p = self.pub_conn(deadline).await.map_err(|e| e.to_string())?;
        let confirmed = tokio::time::timeout(OP_TIMEOUT, async {
            p.confirm
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    expiring_properties(props, ms(HOLD_TTL)),
                )
                .await?
                .await
        })
        .await;
        match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                Err(format!("the copy to `{queue}` was returned as unroutable"))
            }
            Ok(Ok(_)) => Err(format!("the broker did not confirm the copy to `{queue}`")),
            Ok(Err(e)) => Err(format!("publish the copy to `{queue}`: {e}")),
            Err(_) => Err(format!(
                "publish the copy to `{queue}`: no confirm in {OP_TIMEOUT:?}"
            )),
        }
    }
}
