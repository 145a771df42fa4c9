//! Poller status across machines.
//!
//! [`Broker::announce`](crate::broker::Broker::announce) makes a running poller visible: a task with a
//! connection of its own (no lapin recovery) declares the durable fanout
//! exchange `<prefix>status` and a server-named, exclusive, auto-delete
//! queue bound to it, and consumes that queue (`no_ack`). Every ping (a
//! message with `reply_to`) is answered with the poller's [`PollerReport`]
//! as JSON, published to the default exchange with routing key `reply_to`.
//! When the consumer ends or errors (connection loss, or the broker cancels
//! it because the queue was deleted), the task rebuilds connection, queue,
//! binding and consumer at once, then with backoff while that fails (200 ms
//! doubling to 10 s, the broker probed every 200-250 ms once past 400 ms:
//! see `recover::Backoff`), while the broker is open; it logs the loss
//! (`status subscription lost`, INFO: the connection's loss is the one WARN
//! line of `recover::Link`) and, once rebuilt, `answering status
//! requests again`. It stops once the broker is
//! closed or dropped. A poller that dies takes its queue with its connection, so it
//! drops out of the list by itself.
//!
//! [`Broker::pollers`](crate::broker::Broker::pollers) uses direct reply-to: on one channel of the publish
//! connection it consumes `amq.rabbitmq.reply-to` (`no_ack`) *first*, then
//! publishes one ping to `<prefix>status` with `reply_to =
//! amq.rabbitmq.reply-to`, collects the replies for `wait` and closes the
//! channel. Nothing is declared per request but the (idempotent) exchange;
//! with no poller bound the ping is simply dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::time::Instant;

use super::Inner;
use super::connection::{OP_TIMEOUT, TopoErr, op};
use super::recover::{Backoff, Due, Role};
use crate::Error;
use crate::broker::{PollerReport, Presence};
/// Declares the status fanout exchange (idempotent).
async fn declare_status_exchange(inner: &Inner, ch: &Channel, name: &str) -> Result<(), TopoErr> {
    inner.topology.record(true, name);
    op(
        "declare the status exchange",
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

/// One presence subscription: a connection of its own (no lapin recovery:
/// [`presence_loop`] rebuilds it), a server-named exclusive queue bound to
/// `<prefix>status`, and its consumer.
struct PresenceSub {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl PresenceSub {
    async fn open(inner: &Inner) -> Result<PresenceSub, String> {
        let conn = inner.connect_with("status", false).await?;
        let sub = async {
            let ch = op("open channel", conn.create_channel()).await?;
            let exchange = inner.status_name();
            declare_status_exchange(inner, &ch, &exchange).await?;
            let q = op(
                "declare the status queue",
                ch.queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            op(
                "bind the status queue",
                ch.queue_bind(
                    q.name().clone(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
            let consumer = op(
                "consume the status queue",
                ch.basic_consume(
                    q.name().clone(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok::<_, TopoErr>((ch, consumer))
        }
        .await;
        match sub {
            Ok((channel, consumer)) => Ok(PresenceSub {
                conn,
                channel,
                consumer,
            }),
            Err(e) => {
                let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "OK".into())).await;
                Err(match e {
                    TopoErr::Fatal(e) => e.to_string(),
                    TopoErr::Transient(m) => m,
                })
            }
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(OP_TIMEOUT, self.conn.close(200, "OK".into())).await;
    }
}

/// Longest pause between status connection attempts (see `recover::Backoff`).
const STATUS_RETRY_MAX: Duration = Duration::from_secs(10);

/// Waits until `backoff` says to connect again, probing the broker when it
/// says so (and connecting at once when the broker answers).
async fn wait_out(inner: &Weak<Inner>, backoff: &mut Backoff) {
    loop {
        match backoff.due() {
            Due::Attempt => return,
            Due::Probe => {
                let Some(i) = inner.upgrade() else { return };
                if i.closed.load(Ordering::SeqCst) || i.reachable().await {
                    return;
                }
                backoff.probed();
            }
            Due::Wait => match backoff.wake_at() {
                Some(at) => tokio::time::sleep_until(at).await,
                None => return,
            },
        }
    }
}

/// Answers status pings for as long as the broker is open: every message
/// with a `reply_to` gets `presence.report()` as JSON, published to the
/// default exchange with that routing key. When the consumer ends or errors
/// (connection loss), everything is rebuilt with backoff. `first` gets the
/// outcome of the first attempt.
async fn presence_loop(
    inner: Weak<Inner>,
    presence: Arc<dyn Presence>,
    first: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    let mut backoff = Backoff::new(STATUS_RETRY_MAX);
    // Whether the subscription was lost (or never made): its rebuild is logged.
    let mut lost = false;
    let alive = |inner: &Weak<Inner>| {
        inner
            .upgrade()
            .is_some_and(|i| !i.closed.load(Ordering::SeqCst))
    };
    while alive(&inner) {
        let opened = match inner.upgrade() {
            Some(i) => PresenceSub::open(&i).await,
            None => return,
        };
        let mut sub = match opened {
            Ok(sub) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                if lost {
                    if let Some(i) = inner.upgrade() {
                        i.link.back(Role::Status);
                    }
                    tracing::info!("answering status requests again");
                    lost = false;
                }
                backoff.reset();
                sub
            }
            Err(e) => {
                let pause = backoff.failed();
                if let Some(i) = inner.upgrade() {
                    i.link.lost(Role::Status, &e);
                }
                tracing::debug!(error = %e, "cannot subscribe to status requests; retrying in {pause:?} at the latest");
                lost = true;
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                }
                wait_out(&inner, &mut backoff).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                n = sub.consumer.next() => n,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !alive(&inner) {
                        break;
                    }
                    continue;
                }
            };
            let ping = match next {
                Some(Ok(ping)) => ping,
                Some(Err(e)) => {
                    if let Some(i) = inner.upgrade() {
                        i.link.lost(Role::Status, &e);
                    }
                    // INFO: the loss itself is the link's one WARN line.
                    tracing::info!(error = %e, "status subscription lost; resubscribing");
                    lost = true;
                    break;
                }
                None => {
                    tracing::warn!("status subscription ended; resubscribing");
                    lost = true;
                    break;
                }
            };
            let Some(reply_to) = ping.properties.reply_to().clone() else {
                continue;
            };
            let body = match serde_json::to_vec(&presence.report()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode the status report");
                    continue;
                }
            };
            let published = tokio::time::timeout(
                OP_TIMEOUT,
                sub.channel.basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_content_type("application/json".into()),
                ),
            )
            .await;
            if !matches!(published, Ok(Ok(_))) {
                tracing::debug!("could not answer a status request");
            }
        }
        sub.close().await;
    }
}

/// See `Broker::announce`: starts [`presence_loop`] and waits for its first
/// subscription.
pub(super) async fn announce(inner: &Arc<Inner>, presence: Arc<dyn Presence>) -> Result<(), Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(presence_loop(Arc::downgrade(inner), presence, tx));
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(inner.err(format!(
            "cannot answer status requests yet ({e}); retrying in the background"
        ))),
        Err(_) => Err(inner.err("the broker was closed")),
    }
}

impl Inner {
    /// See `Broker::pollers`: direct reply-to on a channel of the publish
    /// connection.
    pub(super) async fn pollers(&self, wait: Duration) -> Result<Option<Vec<PollerReport>>, Error> {
        const REPLY_TO: &str = "amq.rabbitmq.reply-to";
        let inner = self;
        let deadline = Instant::now() + inner.opts.publish_timeout;
        let p = inner.pub_conn(deadline).await?;
        let ch = op("open channel", p.conn.create_channel())
            .await
            .map_err(|e| inner.topo_err(e))?;
        let res = async {
            let exchange = inner.status_name();
            declare_status_exchange(inner, &ch, &exchange).await?;
            // Direct reply-to: consume the pseudo-queue first, then publish
            // on the same channel.
            let mut replies = op(
                "consume replies",
                ch.basic_consume(
                    REPLY_TO.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            op(
                "ask for status",
                ch.basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    b"status",
                    BasicProperties::default().with_reply_to(REPLY_TO.into()),
                ),
            )
            .await?;
            let mut out = Vec::new();
            let until = Instant::now() + wait;
            while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, replies.next()).await {
                match serde_json::from_slice::<PollerReport>(&d.data) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(error = %e, "an unreadable status reply; ignored"),
                }
            }
            Ok::<_, TopoErr>(out)
        }
        .await;
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        let mut out = res.map_err(|e| inner.topo_err(e))?;
        out.sort_by(|a, b| (&a.host, &a.id, a.pid).cmp(&(&b.host, &b.id, b.pid)));
        Ok(Some(out))
    }
}
