//! Periodic ticks on RabbitMQ: a lease through a single-active-consumer
//! queue.
//!
//! `<prefix>periodic.lease` is a durable queue with
//! `x-single-active-consumer`: every poller consumes it (manual ack,
//! prefetch 100) on a connection of its own, and the broker delivers to one
//! consumer at a time. It holds the *state message*, a JSON document with
//! the last tick queued per event. The poller it is delivered to holds it
//! unacked: that is the lease. When that poller's connection dies
//! (SIGKILL, crash, network loss noticed by heartbeats), the broker
//! requeues the message and makes another consumer active, which gets it
//! and resumes after the last tick it records.
//!
//! Queuing a tick (the holder only): on the lease channel, which is in
//! transaction mode (`tx.select`), publish the tick's event and the new
//! state message, ack every state message held so far (one `multiple`
//! ack), then one `tx.commit`. RabbitMQ applies a transaction's publishes
//! and acks together at the commit: a holder killed before it leaves
//! nothing (its channel closes, the broker discards the uncommitted work
//! and requeues the lease message), and the next holder queues that tick,
//! with the same deterministic id, exactly once. (With a confirm channel
//! and the two publishes back to back, a holder killed between them left
//! the event alone: 1 to 3 duplicates in 20 kills at tick boundaries.)
//! A holder killed after the commit and before it saw the commit-ok loses
//! nothing either: the broker has the new state and the ack. The state is
//! then copied to `<prefix>periodic.state` for `poller status`, in a
//! transaction of its own. A failed transaction (a publish, the ack or the
//! commit failing or timing out) gives the lease up: the channel is closed,
//! so nothing uncommitted can ride along with a later commit and the next
//! holder starts from the broker's state. A holder that holds several
//! state messages (each poller publishes an empty one when it connects, so
//! that a first holder exists) merges them (the latest tick per event wins)
//! and acks them together on its next rotation, so extra state messages
//! never pile up. The holder also rotates the state message at least every
//! minute when no tick is due, so it is never held for RabbitMQ's
//! `consumer_timeout`.
//!
//! What remains: RabbitMQ's transactions are not atomic across queues. A
//! broker node that crashes in the middle of a commit (on a cluster, the
//! event's queue and the lease queue may live on different nodes) can keep
//! the event and lose the new state, and so can a network partition that
//! cuts the holder's node off from the lease queue's leader (the lease
//! moves on while the commit still reaches the event's queue); the next
//! holder then queues the tick again, with the same id.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::connection::{OP_TIMEOUT, TopoErr, op};
use super::wire::{envelope_properties, i64_of};
use super::{Inner, lock};
use crate::Error;
use crate::periodic::{TickClaim, TickState};

/// How often the holder republishes the state message when no tick was
/// queued (far below RabbitMQ's 30-minute `consumer_timeout`).
const ROTATE_EVERY: Duration = Duration::from_secs(60);

/// The state message.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Doc {
    v: u32,
    last: BTreeMap<String, i64>,
}

/// This broker's side of the lease.
pub(super) struct Ticks {
    started: AtomicBool,
    lease: Mutex<Lease>,
    /// One rotation at a time: two would share the channel's transaction.
    rotating: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Lease {
    /// Whether the broker delivered the state to this poller's consumer
    /// and its connection is up.
    holding: bool,
    /// The merged state of every state message held (and of the last one
    /// this holder published).
    last: BTreeMap<String, i64>,
    /// The highest delivery tag held and not acked yet.
    max_tag: Option<u64>,
    channel: Option<Channel>,
    rotated: Option<Instant>,
}

impl Ticks {
    pub(super) fn new() -> Ticks {
        Ticks {
            started: AtomicBool::new(false),
            lease: Mutex::new(Lease::default()),
            rotating: tokio::sync::Mutex::new(()),
        }
    }
}

impl Inner {
    fn lease_name(&self) -> String {
        format!("{}periodic.lease", self.opts.prefix)
    }

    fn tick_state_name(&self) -> String {
        format!("{}periodic.state", self.opts.prefix)
    }

    async fn declare_tick_queues(&self, ch: &Channel) -> Result<(), TopoErr> {
        // Quorum queues with `queue_type=quorum`, like the work queues: the
        // lease must outlive the node it lives on.
        let mut sac = self.queue_args();
        sac.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        let lease = self.lease_name();
        op(
            "declare the periodic lease queue",
            ch.queue_declare(lease.as_str().into(), QueueDeclareOptions::durable(), sac),
        )
        .await?;
        self.topology.record(false, &lease);
        let mut one = self.queue_args();
        one.insert("x-max-length".into(), i64_of(1));
        let state = self.tick_state_name();
        op(
            "declare the periodic state queue",
            ch.queue_declare(state.as_str().into(), QueueDeclareOptions::durable(), one),
        )
        .await?;
        self.topology.record(false, &state);
        Ok(())
    }

    /// See `Broker::tick_state`.
    pub(super) async fn tick_state(self: &Arc<Self>) -> Result<TickState, Error> {
        if !self.ticks.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(lease_loop(Arc::downgrade(self)));
        }
        let (holding, last, due) = {
            let l = lock(&self.ticks.lease);
            let due = l.holding && l.rotated.is_none_or(|r| r.elapsed() >= ROTATE_EVERY);
            (l.holding, l.last.clone(), due)
        };
        if due {
            self.rotate(last.clone(), None).await?;
        }
        Ok(TickState {
            holder: holding,
            last,
        })
    }

    /// See `Broker::tick_claim`.
    pub(super) async fn tick_claim(&self, claim: &TickClaim) -> Result<bool, Error> {
        let mut last = {
            let l = lock(&self.ticks.lease);
            let connected = l.channel.as_ref().is_some_and(|c| c.status().connected());
            if !l.holding || !connected || l.last.get(&claim.name).copied() != claim.expected {
                return Ok(false);
            }
            l.last.clone()
        };
        let event = match &claim.envelope {
            Some(env) => {
                // Declared through the publish connection (once per
                // reconnect, as for every publish): a failed declaration
                // closes its channel, never the lease's.
                let target = self.full_name(&env.queue);
                let deadline = Instant::now() + self.opts.publish_timeout;
                let p = self.pub_conn(deadline).await?;
                self.ensure(&p, &target, None)
                    .await
                    .map_err(|e| self.topo_err(e))?;
                Some((target, env.to_bytes()))
            }
            None => None,
        };
        last.insert(claim.name.clone(), claim.tick);
        self.rotate(last, event).await?;
        Ok(true)
    }

    /// Publishes `event` (queue, body) if any and `last` as the new state
    /// message on the lease channel, acks every state message held before,
    /// and commits the three in one transaction: the broker applies all of
    /// them at the commit, or none when the holder dies before it. Any
    /// failure before the commit-ok gives the lease up (see [`give_up`]).
    async fn rotate(
        &self,
        last: BTreeMap<String, i64>,
        event: Option<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let _one = self.ticks.rotating.lock().await;
        let (ch, acked) = {
            let l = lock(&self.ticks.lease);
            match &l.channel {
                Some(ch) if l.holding => (ch.clone(), l.max_tag),
                _ => return Err(self.err("the periodic lease was lost")),
            }
        };
        let body = serde_json::to_vec(&Doc {
            v: 1,
            last: last.clone(),
        })
        .map_err(|e| self.err(format!("periodic state: {e}")))?;
        let lease = self.lease_name();
        let tx = async {
            if let Some((queue, body)) = &event {
                send(&ch, queue, body, envelope_properties(None))
                    .await
                    .map_err(|e| format!("periodic tick to `{queue}`: {e}"))?;
            }
            send(&ch, &lease, &body, state_properties())
                .await
                .map_err(|e| format!("periodic lease: {e}"))?;
            if let Some(tag) = acked {
                op(
                    "ack the periodic state",
                    ch.basic_ack(tag, BasicAckOptions { multiple: true }),
                )
                .await
                .map_err(topo_msg)?;
            }
            commit(&ch, "commit the periodic tick").await
        }
        .await;
        let returned = match tx {
            Ok(returned) => returned,
            Err(e) => {
                self.give_up(&ch, &e);
                return Err(self.err(e));
            }
        };
        {
            let mut l = lock(&self.ticks.lease);
            for (name, tick) in last {
                let e = l.last.entry(name).or_insert(tick);
                *e = (*e).max(tick);
            }
            if l.max_tag == acked {
                l.max_tag = None;
            }
            l.rotated = Some(Instant::now());
        }
        // Committed: the state moved on (and the old state messages are
        // acked) whatever came back. An event returned as unroutable (its
        // queue deleted since it was declared) is that tick lost: an error.
        if let Some(r) = returned.iter().find(|r| r.routing_key.as_str() != lease) {
            return Err(self.err(format!(
                "periodic tick to `{}`: returned by the broker: {}",
                r.routing_key, r.reply_text
            )));
        }
        if !returned.is_empty() {
            // The lease message itself returned: its queue is gone; the
            // lease consumer ends with it.
            return Err(self.err(format!("periodic lease `{lease}`: unroutable")));
        }
        // The copy for `poller status` (a transaction of its own: the lease
        // message is what counts).
        if let Err(e) = publish_committed(&ch, &self.tick_state_name(), &body).await {
            tracing::debug!("periodic state copy not published: {e}");
        }
        Ok(())
    }

    /// After a failed transaction on the lease channel: closes the channel,
    /// so that the broker discards what was not committed and requeues the
    /// lease message (to another poller, or to this one once its lease
    /// connection is rebuilt). The broker's state is then the only one: no
    /// publish of the failed transaction can ride along with a later commit,
    /// and a commit whose outcome is unknown cannot leave this holder's
    /// state behind the broker's.
    fn give_up(&self, ch: &Channel, why: &str) {
        tracing::warn!("periodic lease given up: {why}");
        lock(&self.ticks.lease).holding = false;
        let ch = ch.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        });
    }

    /// See `Broker::tick_last`: the holder's own state, else the copy in
    /// `<prefix>periodic.state` (read and put back).
    pub(super) async fn tick_last(&self) -> Result<BTreeMap<String, i64>, Error> {
        {
            let l = lock(&self.ticks.lease);
            if l.holding {
                return Ok(l.last.clone());
            }
        }
        let conn = self
            .connect_with("status", false)
            .await
            .map_err(|e| self.err(e))?;
        let read = async {
            let ch = op("open channel", conn.create_channel()).await?;
            self.declare_tick_queues(&ch).await?;
            let msg = op(
                "read the periodic state",
                ch.basic_get(
                    self.tick_state_name().as_str().into(),
                    BasicGetOptions { no_ack: false },
                ),
            )
            .await?;
            let Some(msg) = msg else {
                return Ok(BTreeMap::new());
            };
            let doc: Doc = serde_json::from_slice(&msg.delivery.data).unwrap_or_default();
            op(
                "put back the periodic state",
                ch.basic_reject(
                    msg.delivery.delivery_tag,
                    BasicRejectOptions { requeue: true },
                ),
            )
            .await?;
            Ok(doc.last)
        }
        .await;
        let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "OK".into())).await;
        read.map_err(|e| self.topo_err(e))
    }
}

fn state_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// Publishes (mandatory, in the lease channel's current transaction) to
/// `queue` on the default exchange. The channel is no confirm channel: the
/// `PublisherConfirm` lapin returns is `NotRequested`, not awaited.
async fn send(
    ch: &Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), String> {
    tokio::time::timeout(
        OP_TIMEOUT,
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            props,
        ),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Commits the lease channel's transaction; returns the messages the broker
/// returned as unroutable (RabbitMQ sends a transaction's `basic.return`s
/// at the commit, before the commit-ok, and lapin keeps them for
/// `wait_for_confirms`, which on a channel without confirms only drains
/// them).
async fn commit(ch: &Channel, what: &str) -> Result<Vec<BasicReturnMessage>, String> {
    op(what, ch.tx_commit()).await.map_err(topo_msg)?;
    op("read the returned messages", ch.wait_for_confirms())
        .await
        .map_err(topo_msg)
}

/// Publishes a state message to `queue` and commits it; a return (the
/// queue is gone) is an error.
async fn publish_committed(ch: &Channel, queue: &str, body: &[u8]) -> Result<(), String> {
    send(ch, queue, body, state_properties()).await?;
    let returned = commit(ch, "commit the periodic state").await?;
    match returned.first() {
        None => Ok(()),
        Some(r) => Err(format!(
            "`{queue}`: returned by the broker: {}",
            r.reply_text
        )),
    }
}

fn topo_msg(e: TopoErr) -> String {
    match e {
        TopoErr::Fatal(e) => e.to_string(),
        TopoErr::Transient(m) => m,
    }
}

/// Consumes the lease queue for as long as the broker is open: a
/// connection of its own, rebuilt with backoff when lost.
async fn lease_loop(inner: Weak<Inner>) {
    let mut pause = Duration::from_millis(200);
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Ordering::SeqCst) {
            return;
        }
        match consume_lease(&i).await {
            Ok(()) => pause = Duration::from_millis(200),
            Err(e) => {
                tracing::debug!("periodic lease: {e}; again in {pause:?}");
            }
        }
        {
            let mut l = lock(&i.ticks.lease);
            if l.holding {
                tracing::info!("This poller no longer queues the periodic ticks (lease lost)");
            }
            *l = Lease::default();
        }
        drop(i);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One lease connection, until it fails or the broker closes.
async fn consume_lease(inner: &Arc<Inner>) -> Result<(), String> {
    let conn = inner.connect_with("periodic", false).await?;
    let conn = scopeguard(conn);
    let Some(c) = &conn.0 else {
        return Err("no connection".into());
    };
    let ch = inner.tx_channel(c).await?;
    let topo = topo_msg;
    op(
        "periodic lease qos",
        ch.basic_qos(100, BasicQosOptions { global: false }),
    )
    .await
    .map_err(topo)?;
    inner.declare_tick_queues(&ch).await.map_err(topo)?;
    // So that a first holder exists: merged into the state by whoever
    // holds it, and acked with it.
    let empty = serde_json::to_vec(&Doc::default()).map_err(|e| e.to_string())?;
    publish_committed(&ch, &inner.lease_name(), &empty).await?;
    let mut consumer = op(
        "consume the periodic lease",
        ch.basic_consume(
            inner.lease_name().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .map_err(topo)?;
    lock(&inner.ticks.lease).channel = Some(ch.clone());
    loop {
        let next = tokio::select! {
            n = consumer.next() => n,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if inner.closed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                continue;
            }
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the lease consumer ended".into()),
        };
        let doc: Doc = match serde_json::from_slice(&delivery.data) {
            Ok(d) => d,
            Err(e) => {
                // Not ours (our queue holds only state messages): kept out
                // of the state, acked with it.
                tracing::warn!(
                    "periodic lease: a message that is no state message ({e}); dropped at the next rotation"
                );
                Doc::default()
            }
        };
        let mut l = lock(&inner.ticks.lease);
        for (name, tick) in doc.last {
            let e = l.last.entry(name).or_insert(tick);
            *e = (*e).max(tick);
        }
        l.max_tag = Some(l.max_tag.unwrap_or(0).max(delivery.delivery_tag));
        l.holding = true;
    }
}

/// Closes the lease connection when dropped (the broker then hands the
/// lease over at once).
struct ConnGuard(Option<lapin::Connection>);

fn scopeguard(c: lapin::Connection) -> ConnGuard {
    ConnGuard(Some(c))
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let Some(conn) = self.0.take() else { return };
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "OK".into())).await;
            });
        }
    }
}
