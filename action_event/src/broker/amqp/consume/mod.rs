//! `take`: the consume side.
//!
//! # Strict priority, fast
//!
//! `take(["high", "medium", "low"])` must not start a medium event while a
//! high one is ready in the broker. `basic.get` polling is strict but ~8x
//! slower than a consumer; merged consumers are fast but not strict. This
//! backend combines them:
//!
//! - `slot`: one queue's consumer, buffer and counters, and returning
//!   buffered events (`unsubscribe`, the reaper);
//! - `priority`: which level to serve (`select`, `check`) and waiting for work;
//! - `generation`: the consume connection, rebuilt here after a loss.

mod generation;
mod priority;
mod slot;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::message::Delivery as LapinDelivery;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::connection::OP_TIMEOUT;
use super::recover::Backoff;
use super::{Inner, lock};
use crate::Error;
use crate::broker::Delivery;
use generation::{CONS_RETRY_MAX, ConsConn};
use slot::unsubscribe;

pub(super) use slot::{Origin, Slot, reaper};

/// The consume side's state.
pub(super) struct Consume {
    /// The current consume generation (see `generation`).
    conn: Mutex<Option<ConsConn>>,
    /// Held while a task connects (others do not wait for it).
    build: tokio::sync::Mutex<()>,
    /// When the next consume connection attempt (or probe) may start.
    retry: Mutex<Backoff>,
    /// One slot per queue ever taken from.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Woken when a buffer has more for waiting takers, or a generation ends.
    notify: Notify,
    /// Held by the one task that polls the consumers while takers wait.
    pump: tokio::sync::Mutex<()>,
    /// Woken (`notify_waiters`, no permit kept) when the pump is released.
    pump_free: Notify,
    /// Generation ids of consume connections.
    seq: AtomicU64,
}

impl Consume {
    pub(super) fn new() -> Consume {
        Consume {
            conn: Mutex::new(None),
            build: tokio::sync::Mutex::new(()),
            retry: Mutex::new(Backoff::new(CONS_RETRY_MAX)),
            slots: Mutex::new(HashMap::new()),
            notify: Notify::new(),
            pump: tokio::sync::Mutex::new(()),
            pump_free: Notify::new(),
            seq: AtomicU64::new(0),
        }
    }

    /// Takes every consumer with its buffer and the consume connection out;
    /// the future cancels the consumers, returns the buffered events and
    /// closes the connection (the broker requeues what is unacked on it).
    pub(super) fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).drain().map(|(_, s)| s).collect();
        let subs: Vec<_> = slots
            .iter()
            .map(|slot| {
                let mut st = lock(&slot.st);
                (st.sub.take(), std::mem::take(&mut st.buf))
            })
            .collect();
        let cons = lock(&self.conn).take();
        async move {
            for (sub, buf) in subs {
                unsubscribe(sub, buf).await;
            }
            if let Some(c) = cons {
                let _ = tokio::time::timeout(OP_TIMEOUT, c.conn.close(200, "OK".into())).await;
            }
        }
    }
}

enum Pick {
    /// The delivery and where it came from (none only if its consumer was
    /// dropped meanwhile).
    Got(Arc<Slot>, Box<LapinDelivery>, Option<Origin>),
    Retry,
    Wait {
        poll_soon: bool,
    },
}

impl Inner {
    /// The slot of `queue`, made on first use.
    fn slot(&self, queue: &str) -> Arc<Slot> {
        let mut slots = lock(&self.consume.slots);
        if let Some(s) = slots.get(queue) {
            return s.clone();
        }
        slots
            .entry(queue.to_string())
            .or_insert_with(|| Arc::new(Slot::new(queue.to_string(), self.full_name(queue))))
            .clone()
    }

    /// The queues this handle has taken from.
    pub(super) fn slot_names(&self) -> Vec<String> {
        lock(&self.consume.slots).keys().cloned().collect()
    }

    /// Stops consuming `queue` (it was seen paused): cancels its consumer
    /// and returns its buffered events to the queue (`nack`, requeue).
    /// Events handed out from it stay in hand. The next `take` that names
    /// the queue subscribes again.
    pub(super) async fn stop_consuming(&self, queue: &str) {
        let Some(slot) = lock(&self.consume.slots).get(queue).cloned() else {
            return;
        };
        let _g = slot.sub_lock.lock().await;
        let (sub, buf) = {
            let mut st = lock(&slot.st);
            st.clear = false;
            (st.sub.take(), std::mem::take(&mut st.buf))
        };
        if sub.is_some() || !buf.is_empty() {
            tracing::debug!(
                queue,
                n = buf.len(),
                "queue paused: consumer cancelled, buffered events returned"
            );
            unsubscribe(sub, buf).await;
        }
    }

    pub(super) async fn take(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<Delivery>, Error> {
        let deadline = Instant::now() + wait;
        let slots: Vec<Arc<Slot>> = queues.iter().map(|q| self.slot(q)).collect();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let notified = self.consume.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut poll_soon = true;
            if let Some(cons) = self.cons_conn().await
                && !slots.is_empty()
            {
                match self.select(&slots, &cons).await? {
                    Pick::Got(slot, d, origin) => {
                        if let Some(del) = self.hand_out(&slot, *d, origin).await {
                            return Ok(Some(del));
                        }
                        continue;
                    }
                    Pick::Retry => continue,
                    Pick::Wait { poll_soon: p } => poll_soon = p,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let until = if poll_soon {
                deadline.min(now + Duration::from_millis(50))
            } else {
                deadline
            };
            self.wait_for_work(&slots, notified, until).await;
        }
    }
}
