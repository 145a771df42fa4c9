//! Paused queues on RabbitMQ: one marker queue per paused queue.
//!
//! # Design
//!
//! RabbitMQ has no shared key-value store, and without the management
//! plugin it cannot list queues. The state is kept in the broker itself,
//! so every poller on every machine shares it and it survives restarts:
//!
//! - `<prefix>paused.<queue>` is a durable queue that nobody consumes;
//!   `<queue>` is paused while it holds at least one message. (Queue names
//!   starting with `paused.` are reserved, like `dead`, `status` and
//!   `delay.N`.)
//! - Pausing declares it and publishes one persistent message to it
//!   (`{"queue", "paused_at_ms", "pid"}`), with a publisher
//!   confirm, unless it already holds one: once `pause_queue` returns the
//!   pause would survive a broker restart. Resuming purges it.
//! - Reading is a `queue.declare` of the marker (idempotent, durable, no
//!   arguments), whose reply carries the message count: one round trip per
//!   queue, no message moves. Every broker handle reads the markers of the
//!   queues its `take` names at most every 250 ms
//!   ([`crate::broker::paused`]), so a poller sees a pause within 250 ms
//!   and the check per event is a look at its copy. A declared marker of a
//!   queue never paused stays as an empty queue (a few hundred bytes in
//!   the broker; `delete_topology` deletes it).
//! - When a handle sees a queue paused, it cancels that queue's consumer
//!   and returns its prefetched deliveries (`nack`, requeue), so they wait
//!   in the queue and count as waiting; events in hand finish.
//!
//! Why not a fanout control exchange that pushes pauses to pollers: a
//! poller started after the pause would miss it, so the marker is needed
//! anyway, and polling it every 250 ms is fast enough for "within a
//! second"; why not a single state message: reading one message that
//! others read at the same time (`basic.get` then requeue) hides it from
//! them meanwhile, and a reader would take "no message" for "nothing is
//! paused".

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::QueuePurgeOptions;
use lapin::{BasicProperties, Channel, Connection};
use tokio::time::Instant;

use super::connection::{OP_TIMEOUT, TopoErr, op};
use super::publish::PubConn;
use super::{AmqpBroker, Inner, lock};
use crate::Error;
use crate::broker::Delivery;
use crate::broker::paused::{Pausable, PauseCache, check_name};
use crate::envelope::now_ms;

/// The channel a broker handle reads the markers on, kept open between
/// reads (on the publish connection it was opened on). Every poller reads
/// them every 250 ms; a channel opened and closed for each read cost
/// RabbitMQ a channel's processes each time, and the event being routed at
/// that moment waited for them (the latency row's p99: one event every
/// 250 ms started 1.3-2.5 ms late).
#[derive(Default)]
pub(super) struct Pauses {
    kept: Mutex<Option<(Arc<Connection>, Channel)>>,
}

impl Pauses {
    /// The kept channel if it is open on `p`'s connection, else a new one.
    async fn channel(&self, p: &PubConn) -> Result<Channel, TopoErr> {
        if let Some((conn, ch)) = lock(&self.kept).as_ref()
            && Arc::ptr_eq(conn, &p.conn)
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = op("open channel", p.conn.create_channel()).await?;
        let (keep, surplus) = {
            let mut kept = lock(&self.kept);
            match kept.as_ref() {
                // Another read opened one meanwhile: that one is kept.
                Some((conn, k)) if Arc::ptr_eq(conn, &p.conn) && k.status().connected() => {
                    (k.clone(), Some(ch))
                }
                _ => {
                    let old = kept.replace((p.conn.clone(), ch.clone()));
                    (ch, old.map(|(_, o)| o).filter(|o| o.status().connected()))
                }
            }
        };
        if let Some(surplus) = surplus {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(OP_TIMEOUT, surplus.close(200, "OK".into())).await;
            });
        }
        Ok(keep)
    }

    /// Drops `ch` if it is the kept one.
    fn forget(&self, ch: &Channel) {
        let mut kept = lock(&self.kept);
        if kept.as_ref().is_some_and(|(_, k)| k.id() == ch.id()) {
            *kept = None;
        }
    }
}

impl Inner {
    fn marker_name(&self, queue: &str) -> String {
        format!("{}paused.{queue}", self.opts.prefix)
    }

    /// Which of `queues` are paused (module docs: one declare each), on
    /// the channel kept for these reads.
    pub(super) async fn paused_among(&self, queues: &[String]) -> Result<Vec<String>, Error> {
        let deadline = Instant::now() + self.opts.publish_timeout;
        let p = self.pub_conn(deadline).await?;
        let ch = self
            .pauses
            .channel(&p)
            .await
            .map_err(|e| self.topo_err(e))?;
        let res = async {
            let mut out = Vec::new();
            for q in queues {
                if self.declare(&ch, &self.marker_name(q), None).await? > 0 {
                    out.push(q.clone());
                }
            }
            Ok(out)
        }
        .await;
        if res.is_err() {
            // A failed declare closed the channel (or the connection went):
            // the next read opens another.
            self.pauses.forget(&ch);
            let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        }
        res.map_err(|e| self.topo_err(e))
    }

    async fn pause(&self, queue: &str) -> Result<(), Error> {
        if !self.paused_among(&[queue.to_string()]).await?.is_empty() {
            return Ok(());
        }
        let body = serde_json::json!({
            "queue": queue,
            "paused_at_ms": now_ms(),
            "pid": std::process::id(),
        })
        .to_string();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let deadline = Instant::now() + self.opts.publish_timeout;
        self.publish_raw(
            &self.marker_name(queue),
            None,
            body.as_bytes(),
            props,
            deadline,
        )
        .await
    }

    async fn resume(&self, queue: &str) -> Result<(), Error> {
        let deadline = Instant::now() + self.opts.publish_timeout;
        let p = self.pub_conn(deadline).await?;
        let ch = op("open channel", p.conn.create_channel())
            .await
            .map_err(|e| self.topo_err(e))?;
        let marker = self.marker_name(queue);
        let res = async {
            self.declare(&ch, &marker, None).await?;
            op(
                "purge queue",
                ch.queue_purge(marker.as_str().into(), QueuePurgeOptions::default()),
            )
            .await
        }
        .await;
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        res.map(|_| ()).map_err(|e| self.topo_err(e))
    }
}

impl AmqpBroker {
    pub(super) async fn pause(&self, queue: &str, paused: bool) -> Result<(), Error> {
        check_name(&self.inner.redacted, queue)?;
        if paused {
            self.inner.pause(queue).await?;
            self.paused.note(queue, true);
            self.inner.stop_consuming(queue).await;
        } else {
            self.inner.resume(queue).await?;
            self.paused.note(queue, false);
        }
        Ok(())
    }

    /// See [`crate::broker::Broker::paused_queues`]: `high`, `medium`,
    /// `low` and the queues this handle took from or paused.
    pub(super) async fn paused_known(&self) -> Result<Vec<String>, Error> {
        // The poller's default queues (`poller::DEFAULT_QUEUES`; the broker
        // does not depend on the poller).
        let mut names: BTreeSet<String> = ["high", "medium", "low"]
            .iter()
            .map(|q| q.to_string())
            .collect();
        names.extend(self.paused.known());
        names.extend(self.inner.slot_names());
        let names: Vec<String> = names.into_iter().collect();
        self.inner.paused_among(&names).await
    }
}

#[async_trait]
impl Pausable for AmqpBroker {
    fn pause_cache(&self) -> &PauseCache {
        &self.paused
    }

    async fn load_paused(
        &self,
        queues: &[String],
    ) -> Result<(BTreeSet<String>, Option<BTreeSet<String>>), Error> {
        let paused = self.inner.paused_among(queues).await?;
        Ok((
            paused.into_iter().collect(),
            Some(queues.iter().cloned().collect()),
        ))
    }

    async fn now_paused(&self, queues: &[String]) {
        for q in queues {
            self.inner.stop_consuming(q).await;
        }
    }

    async fn take_from(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<Delivery>, Error> {
        self.inner.take(queues, wait).await
    }

    async fn put_back(&self, delivery: &Delivery) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        self.inner.settle_nack(tag).await;
        Ok(())
    }
}
