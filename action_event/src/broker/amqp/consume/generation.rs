//! Consume generations: the consume connection and its consumers.
//!
//! **Consume side: no lapin recovery; generations rebuilt here.** The
//! consume connection, its channels, consumers and the events they buffered
//! form one *generation*, numbered; every consumer records the generation
//! it was made in. Once the connection is not connected (closed by the
//! broker, the socket lost, the broker stopped, a missed heartbeat) the whole
//! generation is dropped at once: lapin errs and ends each of its consumers
//! (`Err`, then the end of the stream), so a waiting `take` wakes up, and
//! the next `take` forgets every consumer of that generation with its
//! buffer (the broker has requeued those events), then connects anew, at
//! most once per pause (200 ms doubling to 5 s, ±25 % jitter; reset on
//! success; past 400 ms the broker is probed every 200-250 ms and an
//! attempt made as soon as it answers, see `recover::Backoff`) and never
//! blocking on another task's attempt. Consumers are made again, lazily, by
//! the `take`s that reach their levels. Events handed out from the old
//! generation are not acked (their connection is gone: each generation
//! has an `alive` flag, cleared as soon as its connection reports an error)
//! and come back (`redelivered`). A consumer that errs or ends on a live
//! connection (its channel closed, its queue deleted) is made again on a new
//! channel of the same connection. Why not lapin's `enable_auto_recover()`
//! here (measured with it, RabbitMQ 3.10.8): after a broker restart lapin
//! re-opened the old channel with its consumer while this module had
//! already made a new one;
//! the broker then pushed a full prefetch to the old consumer, which no
//! `take` read any more (`rabbitmqctl list_channels`: channel 1 with 32
//! unacked, channel 2 with 0, on each poller's connection). Those events
//! never came back: 32 of 2,000 missing at broker level, pollers stalled at
//! 4,952 of 5,000. One owner of recovery rules that out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use lapin::Connection;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::slot::{Slot, SlotState, Sub, unsubscribe};
use crate::Error;
use crate::broker::amqp::connection::{TopoErr, op};
use crate::broker::amqp::recover::{Due, Role};
use crate::broker::amqp::{Inner, lock};

/// Longest pause between consume connection attempts (see `recover::Backoff`).
pub(super) const CONS_RETRY_MAX: Duration = Duration::from_secs(5);

/// One consume generation: a connection without lapin recovery, and its id,
/// which every [`Sub`] made on it carries.
#[derive(Clone)]
pub(crate) struct ConsConn {
    pub(crate) conn: Arc<Connection>,
    pub(crate) id: u64,
    /// Cleared once the connection is lost: deliveries of this generation
    /// are then neither acked nor waited for (one atomic load per settle).
    pub(crate) alive: Arc<AtomicBool>,
}

impl Inner {
    /// The consume connection if it is up; `None` while there is none.
    ///
    /// It has no lapin recovery: once it is not connected (closed by the
    /// broker, the socket lost, a missed heartbeat), its whole generation is
    /// dropped (every consumer made on it and the events they buffered; the
    /// broker requeues them) and a new connection is made, at most one
    /// attempt per pause (200 ms doubling to 5 s, ±25 %; past 400 ms the
    /// broker is probed every 200-250 ms, and an attempt made as soon as it
    /// answers). Never blocks on another task's attempt: returns `None`
    /// instead.
    pub(crate) async fn cons_conn(&self) -> Option<ConsConn> {
        if let Some(c) = lock(&self.consume.conn).as_ref()
            && c.conn.status().connected()
        {
            return Some(c.clone());
        }
        let Ok(_g) = self.consume.build.try_lock() else {
            return None;
        };
        let old = {
            let mut cur = lock(&self.consume.conn);
            if let Some(c) = cur.as_ref()
                && c.conn.status().connected()
            {
                return Some(c.clone());
            }
            cur.take()
        };
        if let Some(old) = old {
            old.alive.store(false, Ordering::SeqCst);
            self.link.lost(Role::Consume, &"the connection closed");
            tracing::debug!(
                url = %self.redacted,
                "consume connection lost: reconnecting; events taken on it and not acked go back to their queues"
            );
            self.drop_generation(old.id);
            lock(&self.consume.retry).reset();
        }
        let due = lock(&self.consume.retry).due();
        match due {
            Due::Attempt => {}
            Due::Wait => return None,
            Due::Probe => {
                if !self.reachable().await {
                    lock(&self.consume.retry).probed();
                    return None;
                }
            }
        }
        match self.connect_with("consume", false).await {
            Ok(conn) => {
                lock(&self.consume.retry).reset();
                let alive = Arc::new(AtomicBool::new(true));
                let conn = Arc::new(conn);
                self.watch(&conn, Role::Consume, None, Some(alive.clone()));
                let id = self.consume.seq.fetch_add(1, Ordering::SeqCst) + 1;
                let c = ConsConn { conn, id, alive };
                *lock(&self.consume.conn) = Some(c.clone());
                self.link.back(Role::Consume);
                Some(c)
            }
            Err(e) => {
                let pause = lock(&self.consume.retry).failed();
                self.link.lost(Role::Consume, &e);
                tracing::debug!(url = %self.redacted, error = %e, "cannot connect to consume; retrying in {pause:?} at the latest");
                None
            }
        }
    }

    /// Forgets every consumer of generation `id` and the events it buffered.
    /// Their connection is gone: the broker has requeued those events, and
    /// nothing can be sent on their channels any more.
    fn drop_generation(&self, id: u64) {
        let slots: Vec<Arc<Slot>> = lock(&self.consume.slots).values().cloned().collect();
        for slot in slots {
            let mut st = lock(&slot.st);
            if st.sub.as_ref().is_some_and(|s| s.conn_id == id) {
                st.sub = None;
                st.buf.clear();
                st.clear = false;
            }
        }
        // A task waiting on the dropped consumers looks again.
        self.consume.notify.notify_waiters();
    }

    /// Makes sure `slot` has a live consumer on the current connection.
    pub(super) async fn ensure_sub(
        &self,
        slot: &Arc<Slot>,
        cons: &ConsConn,
    ) -> Result<bool, Error> {
        let ok = |st: &SlotState| {
            st.sub
                .as_ref()
                .is_some_and(|s| s.conn_id == cons.id && s.channel.status().connected())
        };
        if ok(&lock(&slot.st)) {
            return Ok(true);
        }
        let _g = slot.sub_lock.lock().await;
        let (old, buf) = {
            let mut st = lock(&slot.st);
            if ok(&st) {
                return Ok(true);
            }
            st.clear = false;
            (st.sub.take(), std::mem::take(&mut st.buf))
        };
        if old.is_some() || !buf.is_empty() {
            tokio::spawn(unsubscribe(old, buf));
        }
        let res = async {
            let ch = op("open channel", cons.conn.create_channel()).await?;
            op(
                "declare queue",
                ch.queue_declare(
                    slot.full.as_str().into(),
                    QueueDeclareOptions::durable(),
                    self.queue_args(),
                ),
            )
            .await?;
            self.topology.record(false, &slot.full);
            op(
                "qos",
                ch.basic_qos(self.opts.prefetch, BasicQosOptions { global: false }),
            )
            .await?;
            let tag = format!("action_event.{}", uuid::Uuid::now_v7());
            let consumer = op(
                "consume",
                ch.basic_consume(
                    slot.full.as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok::<_, TopoErr>(Sub {
                channel: ch,
                consumer,
                conn_id: cons.id,
                alive: cons.alive.clone(),
                unacked: Arc::new(AtomicUsize::new(0)),
                in_hand: Arc::new(AtomicUsize::new(0)),
                acks: Arc::default(),
            })
        }
        .await;
        match res {
            Ok(sub) => {
                let mut st = lock(&slot.st);
                st.sub = Some(sub);
                st.clear = false;
                Ok(true)
            }
            Err(TopoErr::Fatal(e)) => Err(self.topo_err(TopoErr::Fatal(e))),
            Err(TopoErr::Transient(m)) => {
                tracing::debug!(queue = %slot.name, error = %m, "cannot subscribe yet");
                Ok(false)
            }
        }
    }
}
