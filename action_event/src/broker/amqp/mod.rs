//! The RabbitMQ backend (`amqp://` and `amqps://`), on lapin.
//!
//! One publish connection (lapin recovery on) with a confirm channel shared
//! by every caller; one consume connection per *generation* (no lapin
//! recovery: this backend rebuilds it) with a consumer per queue feeding a
//! local buffer; strict priority between queues; delays through a ladder of
//! TTL queues; long events moved to fresh deliveries before RabbitMQ's
//! `consumer_timeout`; dead events in one queue; poller status by fanout
//! pings. Each part lives in its own module, with the design notes on it:
//!
//! | module | what it owns |
//! |---|---|
//! | `options` | the URL: our query options, lapin's defaults (`heartbeat`, `frame_max`) |
//! | `connection` | connecting (TLS, the probe), the connection watcher, broker round trips with a timeout (`op`) |
//! | `recover` | after a loss: when to connect again (`Backoff`), and one WARN and one INFO line per loss (`Link`) |
//! | `wire` | message properties and headers of events, copies and dead events |
//! | `topology` | queue and exchange names, idempotent declarations per publish epoch |
//! | `publish` | the publish connection and its confirm channel, confirmed publishes |
//! | `publish_many` | bulk publishing: a batch's confirms all in flight at once |
//! | `delay` | the delay ladder: levels, picking one, early events sent round again |
//! | `consume` | `take`: per-queue consumers and buffers (`slot`), strict priority (`priority`), consume generations (`generation`) |
//! | `tag` | what a handed-out delivery carries until it is settled |
//! | `delivery` | handing an event out, `ack` and `release` of it |
//! | `hold` | long events: renewal through hold queues |
//! | `poison` | quorum queues: an event delivered `delivery_limit` times without a settlement is dead |
//! | `dead` | the dead queue and its admin commands |
//! | `status` | answering status pings, and asking for them |
//! | `pause` | paused queues: a marker queue per paused queue, read at most every 250 ms |
//! | `tick` | periodic ticks: the single-active-consumer lease |
//! | `management` | the `management` option and one GET to RabbitMQ's management API |
//! | `stall` | quorum queues: warns of dead-lettering RabbitMQ 3.10 stalled (`broker_health`) |
//!
//! Following one publish: [`Broker::publish`] → `Inner::publish_envelope`
//! (`publish`) → `Inner::route` (picks a delay level, `delay`) →
//! `Inner::publish_raw` → `Inner::pub_conn` and `Inner::ensure` (`topology`).
//! Following one `take`: `Inner::take` (`consume`) → `Inner::cons_conn`
//! (`consume::generation`) → `Inner::select` (`consume::priority`) →
//! `Inner::hand_out` (`delivery`).
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), action_event::Error> {
//! use std::time::Duration;
//! use action_event::broker::{Broker, amqp::AmqpBroker};
//! let broker = AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f?prefix=shop.").await?;
//! broker.publish(&action_event::Envelope::new("send_mail", "high", serde_json::json!({}))).await?;
//! let queues = ["high".to_string(), "low".to_string()];
//! if let Some(delivery) = broker.take(&queues, Duration::from_secs(1)).await? {
//!     broker.ack(&delivery).await?;
//! }
//! broker.close().await;
//! # Ok(()) }
//! ```

mod ack_batch;
mod connection;
mod consume;
mod dead;
mod delay;
mod delivery;
mod hold;
mod management;
mod options;
mod pause;
mod poison;
mod publish;
mod publish_many;
mod recover;
mod stall;
mod status;
mod tag;
mod tick;
mod topology;
mod wire;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Broker, BrokerHealth, DeadEvent, DeadFilter, Delivery, PollerReport, Presence, QueueDepth,
};
use crate::envelope::{Envelope, now_ms};
use crate::{Error, redact_url};
use connection::TopoErr;
use consume::Consume;
use hold::Holds;
use options::Options;
use publish::Publisher;
use recover::Link;
use topology::Topology;

pub use options::{
    DEFAULT_CONSUMER_TIMEOUT, DEFAULT_DELIVERY_LIMIT, DEFAULT_PREFETCH, DEFAULT_PREFIX,
    DEFAULT_PUBLISH_TIMEOUT,
};
pub use wire::{HEADER_DIED_AT, HEADER_NAME, HEADER_QUEUE, HEADER_RUN_AT};

/// The RabbitMQ backend. See the module docs for the design.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// use action_event::broker::{Broker, amqp::AmqpBroker};
/// let broker = AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f?prefix=myapp.").await?;
/// broker.publish(&action_event::Envelope::new("hello_world", "high", serde_json::json!({}))).await?;
/// # Ok(()) }
/// ```
pub struct AmqpBroker {
    inner: Arc<Inner>,
    /// This handle's copy of the paused queues (`pause`).
    paused: super::paused::PauseCache,
}

/// The shared state, one part per module; each part's fields are private
/// to the module that owns it.
struct Inner {
    /// The URL with its password redacted, for errors and logs.
    redacted: String,
    opts: Options,
    /// Set by `close` and `Drop`: background tasks stop, `take` returns `None`.
    closed: AtomicBool,
    /// Whether the connections are up, for the log (see `connection`).
    link: Arc<Link>,
    publisher: Publisher,
    topology: Topology,
    consume: Consume,
    holds: Holds,
    ticks: tick::Ticks,
    stall: stall::Watch,
    pauses: pause::Pauses,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AmqpBroker {
    /// Connects (the publish connection; the consume connection opens on
    /// the first `take`). Fails when the URL is malformed or the broker
    /// cannot be reached; the error shows the URL with its password redacted.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let broker = action_event::broker::amqp::AmqpBroker::open(
    ///     "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&publish_timeout=5s",
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<AmqpBroker, Error> {
        let opts = options::parse_url(url)?;
        connection::probe_any(&opts)
            .await
            .map_err(|e| match e.tls {
                true => Error::broker(&redact_url(url), e.message),
                false => Error::broker_unreachable(&redact_url(url), e.message),
            })?;
        let inner = Arc::new(Inner {
            redacted: redact_url(url),
            opts,
            closed: AtomicBool::new(false),
            link: Arc::new(Link::new(redact_url(url))),
            publisher: Publisher::new(),
            topology: Topology::new(),
            consume: Consume::new(),
            holds: Holds::new(),
            ticks: tick::Ticks::new(),
            stall: Default::default(),
            pauses: Default::default(),
        });
        inner.open_publisher().await?;
        tokio::spawn(consume::reaper(Arc::downgrade(&inner)));
        tokio::spawn(hold::renewer(Arc::downgrade(&inner)));
        Ok(AmqpBroker {
            inner,
            paused: Default::default(),
        })
    }

    /// The queue-name prefix in use.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let b = action_event::broker::amqp::AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// assert_eq!(b.prefix(), "action_event.");
    /// # Ok(()) }
    /// ```
    pub fn prefix(&self) -> &str {
        &self.inner.opts.prefix
    }

    /// Stops taking: cancels the consumers, returns every buffered event that
    /// was not handed out (`nack` with `requeue: true`) and closes both
    /// connections. Events handed out and not yet acked go back to their
    /// queues when the connection closes. Dropping the broker does the same
    /// without waiting.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let b = action_event::broker::amqp::AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// b.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        self.inner.shutdown().await;
    }

    /// Deletes every queue and exchange this instance declared (work queues,
    /// the dead queue, the delay ladder) with their messages. For tests and
    /// tear-down; returns how many were deleted.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let b = action_event::broker::amqp::AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f?prefix=scratch.").await?;
    /// b.delete_topology().await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_topology(&self) -> Result<u64, Error> {
        self.inner.delete_topology().await
    }
}

impl Drop for AmqpBroker {
    fn drop(&mut self) {
        // Closing the consume connection makes the broker requeue every
        // buffered and unacked delivery; dropping the handles closes it.
        let shutdown = self.inner.shutdown();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(shutdown);
        }
    }
}

impl Inner {
    /// Marks the broker closed and takes the consume side and the publish
    /// connection out at once; the returned future cancels the consumers,
    /// returns their buffered events, then closes the consume connection
    /// and, after its outstanding confirms, the publish connection. `close`
    /// awaits it; `Drop` spawns it (or, outside a runtime, drops it, which
    /// drops the connection handles).
    fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        self.closed.store(true, Ordering::SeqCst);
        self.link.report_unsent();
        let consume = self.consume.shutdown();
        let publish = self.publisher.shutdown();
        async move {
            consume.await;
            publish.await;
        }
    }

    fn err(&self, message: impl Into<crate::BoxError>) -> Error {
        Error::broker(&self.redacted, message)
    }

    fn topo_err(&self, e: TopoErr) -> Error {
        match e {
            TopoErr::Fatal(Error::Broker { source, .. }) => self.err(source),
            TopoErr::Fatal(e) => e,
            TopoErr::Transient(m) => self.err(m),
        }
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn url(&self) -> String {
        self.inner.redacted.clone()
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), Error> {
        self.inner.publish_envelope(envelope).await
    }

    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error> {
        self.inner.start_stall_watch();
        super::paused::take(self, queues, wait).await
    }

    async fn give_back(&self) -> Result<(), Error> {
        // Buffered events go back when the connection closes; what is in
        // hand is settled next, and the acks a lost connection kept from
        // being sent are counted in one line once the last one is.
        self.inner.stop_taking();
        Ok(())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        self.inner.settle_ack(tag).await;
        Ok(())
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        next: &Envelope,
        delay: Duration,
    ) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        let mut env = next.clone();
        let at = now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        if !delay.is_zero() {
            env.run_at_ms = Some(env.run_at_ms.unwrap_or(0).max(at));
        }
        self.inner.publish_envelope(&env).await?;
        self.inner.settle_ack(tag).await;
        Ok(())
    }

    async fn dead(&self, delivery: &Delivery, dead: &DeadEvent) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        self.inner.bury(tag, dead).await
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        self.inner.settle_nack(tag).await;
        Ok(())
    }

    async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error> {
        self.inner.dead_list(filter).await
    }

    async fn dead_retry(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        self.inner.dead_retry(id, filter).await
    }

    async fn dead_purge(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        self.inner.dead_purge(id, filter).await
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, Error> {
        self.inner.depth(queue).await
    }

    async fn announce(&self, presence: Arc<dyn Presence>) -> Result<(), Error> {
        status::announce(&self.inner, presence).await
    }

    async fn pollers(&self, wait: Duration) -> Result<Option<Vec<PollerReport>>, Error> {
        self.inner.pollers(wait).await
    }

    async fn pause_queue(&self, queue: &str) -> Result<(), Error> {
        self.pause(queue, true).await
    }

    async fn resume_queue(&self, queue: &str) -> Result<(), Error> {
        self.pause(queue, false).await
    }

    async fn paused_queues(&self) -> Result<Vec<String>, Error> {
        self.paused_known().await
    }

    async fn paused_among(&self, queues: &[String]) -> Result<Vec<String>, Error> {
        self.inner.paused_among(queues).await
    }

    // --- perf ---

    async fn publish_many(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        self.inner.publish_envelopes(envelopes).await
    }

    async fn tick_state(&self) -> Result<crate::periodic::TickState, Error> {
        self.inner.tick_state().await
    }

    async fn tick_claim(&self, claim: &crate::periodic::TickClaim) -> Result<bool, Error> {
        self.inner.tick_claim(claim).await
    }

    async fn tick_last(&self) -> Result<std::collections::BTreeMap<String, i64>, Error> {
        self.inner.tick_last().await
    }

    async fn broker_health(&self) -> Result<Option<BrokerHealth>, Error> {
        Ok(self.inner.health().await)
    }
}
