//! Publishing.
//!
//! One publish connection with one confirm channel shared by every caller;
//! each `publish` awaits only its own confirm, so concurrent publishes
//! pipeline. Messages are persistent, `mandatory` (an unroutable message is
//! an error), with no property but those two and `content_type` (see
//! docs/wire-format.md). A confirm lost in a reconnect is republished
//! (at-least-once: consumers dedupe by the envelope's `id` when it
//! matters). During an outage `publish` waits for the connection to come back
//! up to `publish_timeout`.
//!
//! **Publish side: lapin recovery.** The publish connection keeps
//! `enable_auto_recover()` with unlimited retries (200-400 ms apart, plus up
//! to 100 % jitter), plus a supervisor here: a connection that ended up
//! closed is rebuilt, and topology is declared again after any reconnect
//! (an epoch bumped from the connection's events). A publish whose confirm
//! is lost in a reconnect is published again.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::time::Instant;

use super::connection::{OP_TIMEOUT, TopoErr};
use super::delay::pick_level;
use super::recover::Role;
use super::wire::{envelope_properties, expiring_properties};
use super::{Inner, lock};
use crate::Error;
use crate::envelope::{Envelope, now_ms};

/// The publish side's state.
pub(super) struct Publisher {
    /// The publish connection and its confirm channel, once open.
    conn: Mutex<Option<PubConn>>,
    /// Held while a task rebuilds [`Publisher::conn`].
    build: tokio::sync::Mutex<()>,
    /// Bumped on every (re)connect: declarations are redone per epoch.
    epoch: Arc<AtomicU64>,
}

impl Publisher {
    pub(super) fn new() -> Publisher {
        Publisher {
            conn: Mutex::new(None),
            build: tokio::sync::Mutex::new(()),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current publish epoch (see `topology`).
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Takes the connection out; the future waits for its outstanding
    /// confirms, then closes it.
    pub(super) fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let publ = lock(&self.conn).take();
        async move {
            if let Some(p) = publ {
                let _ = tokio::time::timeout(OP_TIMEOUT, p.confirm.wait_for_confirms()).await;
                let _ = tokio::time::timeout(OP_TIMEOUT, p.conn.close(200, "OK".into())).await;
            }
        }
    }
}

/// The publish connection and its confirm channel.
#[derive(Clone)]
pub(super) struct PubConn {
    pub(super) conn: Arc<Connection>,
    pub(super) confirm: Channel,
    /// Since when (ms, 0: not) every confirm on `confirm` has been a nack.
    pub(super) nacking_since: Arc<AtomicU64>,
}

/// How long nacks must go on, with no ack between them, before the confirm
/// channel is replaced. A quorum queue nacks a publish now and then on a
/// healthy but loaded node (measured: 6 and 83 nacks in two `--only
/// quorum` bench runs); closing the shared channel for each one failed
/// every publish in flight on it, and those already stored were stored
/// twice (106 duplicates in one run). Only a channel that nacks everything
/// for this long (RabbitMQ 3.10 after a quorum leader's death, see
/// `cluster_e2e`) is replaced.
const NACK_STREAK: Duration = Duration::from_secs(1);

impl PubConn {
    fn new(conn: Arc<Connection>, confirm: Channel) -> PubConn {
        PubConn {
            conn,
            confirm,
            nacking_since: Default::default(),
        }
    }

    /// Notes an ack: the nack streak, if any, is over.
    fn acked(&self) {
        self.nacking_since.store(0, Ordering::Relaxed);
    }

    /// Notes a nack; whether nacks have now gone on for [`NACK_STREAK`]
    /// with no ack between them.
    fn nacked_for_long(&self) -> bool {
        let now = now_ms().max(1);
        match self
            .nacking_since
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => false,
            Err(since) => now.saturating_sub(since) >= NACK_STREAK.as_millis() as u64,
        }
    }
}

impl Inner {
    /// Opens the first publish connection (`AmqpBroker::open`).
    pub(super) async fn open_publisher(&self) -> Result<(), Error> {
        let conn = self.connect("publish").await.map_err(|e| {
            Error::broker_unreachable(&self.redacted, format!("cannot connect: {e}"))
        })?;
        let confirm = self
            .confirm_channel(&conn)
            .await
            .map_err(|e| self.err(format!("cannot open a channel: {e}")))?;
        let conn = Arc::new(conn);
        self.watch(
            &conn,
            Role::Publish,
            Some(self.publisher.epoch.clone()),
            None,
        );
        *lock(&self.publisher.conn) = Some(PubConn::new(conn, confirm));
        Ok(())
    }

    /// The publish connection and its confirm channel, rebuilt when needed;
    /// waits for a reconnect until `deadline`.
    pub(super) async fn pub_conn(&self, deadline: Instant) -> Result<PubConn, Error> {
        let mut last = String::from("not connected");
        let mut pause = Duration::from_millis(50);
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(self.err("the broker was closed"));
            }
            let cur = lock(&self.publisher.conn).clone();
            let mut rebuild = true;
            if let Some(p) = &cur {
                let cs = p.conn.status();
                if cs.connected() && p.confirm.status().connected() {
                    return Ok(p.clone());
                }
                if cs.reconnecting() || cs.connecting() || p.confirm.status().reconnecting() {
                    rebuild = false;
                    last = "reconnecting".into();
                }
            }
            if rebuild {
                let _g = self.publisher.build.lock().await;
                let again = lock(&self.publisher.conn).clone();
                let healthy =
                    |p: &PubConn| p.conn.status().connected() && p.confirm.status().connected();
                if again.as_ref().is_some_and(healthy) {
                    continue;
                }
                if again
                    .as_ref()
                    .is_some_and(|p| p.conn.status().reconnecting() || p.conn.status().connecting())
                {
                    last = "reconnecting".into();
                } else {
                    // Keep a connection that is still up (only its channel broke).
                    let keep = again
                        .as_ref()
                        .filter(|a| a.conn.status().connected())
                        .map(|a| a.conn.clone());
                    let fresh = keep.is_none();
                    let conn = match keep {
                        Some(c) => Ok(c),
                        None => self.connect("publish").await.map(Arc::new),
                    };
                    match conn {
                        Ok(conn) => match self.confirm_channel(&conn).await {
                            Ok(confirm) => {
                                if fresh {
                                    self.watch(
                                        &conn,
                                        Role::Publish,
                                        Some(self.publisher.epoch.clone()),
                                        None,
                                    );
                                }
                                self.publisher.epoch.fetch_add(1, Ordering::SeqCst);
                                self.link.back(Role::Publish);
                                *lock(&self.publisher.conn) = Some(PubConn::new(conn, confirm));
                                continue;
                            }
                            Err(e) => last = e,
                        },
                        Err(e) => last = e,
                    }
                }
            }
            if Instant::now() + pause >= deadline {
                return Err(self.err(format!(
                    "broker unavailable for {:?} ({last}); gave up (raise `publish_timeout` in the URL to wait longer)",
                    self.opts.publish_timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Publishes with confirm to queue `routing_key` (through delay level
    /// `level` if given), retrying through reconnects until `deadline`.
    pub(super) async fn publish_raw(
        &self,
        routing_key: &str,
        level: Option<u64>,
        body: &[u8],
        props: BasicProperties,
        deadline: Instant,
    ) -> Result<(), Error> {
        let exchange = level.map(|l| self.delay_name(l)).unwrap_or_default();
        let exchange = exchange.as_str();
        let props = match level {
            Some(l) => expiring_properties(props, l),
            None => props,
        };
        let mut pause = Duration::from_millis(20);
        loop {
            let p = self.pub_conn(deadline).await?;
            let res = async {
                self.ensure(&p, routing_key, level).await?;
                let confirm = p
                    .confirm
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        body,
                        props.clone(),
                    )
                    .await
                    .map_err(|e| TopoErr::Transient(e.to_string()))?;
                confirm.await.map_err(|e| TopoErr::Transient(e.to_string()))
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(remaining, res).await {
                Err(_) => "no confirm".to_string(),
                Ok(Err(TopoErr::Fatal(e))) => return Err(self.topo_err(TopoErr::Fatal(e))),
                Ok(Err(TopoErr::Transient(m))) => m,
                Ok(Ok(Confirmation::Ack(None))) => {
                    p.acked();
                    return Ok(());
                }
                Ok(Ok(Confirmation::Ack(Some(ret)))) => {
                    return Err(self.err(format!(
                        "message to `{routing_key}` was returned as unroutable: {} {}",
                        ret.reply_code, ret.reply_text
                    )));
                }
                Ok(Ok(Confirmation::Nack(_))) => {
                    // A nacked message was not stored: it is sent again.
                    // When a quorum queue's leader died, RabbitMQ 3.10 may
                    // go on nacking everything on that channel (measured:
                    // 60 s and more, on a cluster that had a new leader in
                    // 0.2 s); a fresh confirm channel publishes at once, so
                    // a channel that only nacks for [`NACK_STREAK`] is
                    // closed and `pub_conn` opens another (see
                    // cluster_e2e). A single nack closes nothing: that
                    // would fail every publish in flight on the channel.
                    if p.nacked_for_long() {
                        let ch = p.confirm.clone();
                        tokio::spawn(async move {
                            let _ =
                                tokio::time::timeout(OP_TIMEOUT, ch.close(200, "nacked".into()))
                                    .await;
                        });
                    }
                    "the broker nacked the message".to_string()
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    return Err(self.err("publisher confirms are not on"));
                }
            };
            if Instant::now() + pause >= deadline {
                return Err(self.err(format!(
                    "publish to `{routing_key}` not confirmed within {:?} ({last})",
                    self.opts.publish_timeout
                )));
            }
            tracing::debug!(error = %last, "publish not confirmed; publishing again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Sends a message to its work queue, through the delay ladder when
    /// `run_at` is in the future.
    pub(super) async fn route(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
        run_at: Option<u64>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let target = self.full_name(queue);
        let remaining = run_at.map(|r| r.saturating_sub(now_ms())).unwrap_or(0);
        let level = (remaining > 0).then(|| pick_level(remaining));
        self.publish_raw(&target, level, body, props, deadline)
            .await
    }

    pub(super) async fn publish_envelope(&self, env: &Envelope) -> Result<(), Error> {
        let deadline = Instant::now() + self.opts.publish_timeout;
        let run_at = env.run_at_ms.filter(|r| *r > now_ms());
        let props = envelope_properties(env.run_at_ms);
        self.route(&env.queue, &env.to_bytes(), props, run_at, deadline)
            .await
    }
}
