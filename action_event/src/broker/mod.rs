//! The broker boundary: every backend implements [`Broker`], and nothing above
//! it (the poller, `queue!`) knows which backend it talks to.
//!
//! A backend is chosen by one URL ([`connect`]): `sqlite://path.db` (the
//! default, [`DEFAULT_URL`]), `amqp://user:pass@host:5672/vhost` or
//! `postgres://user@host/db` (feature `postgres`).
//!
//! ```no_run
//! use action_event::broker;
//! # async fn run() -> Result<(), action_event::Error> {
//! let broker = broker::connect(&broker::resolve_url(None)).await?;
//! println!("using {}", broker.url());
//! # Ok(()) }
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::envelope::{AttemptError, Envelope, EventId};

#[cfg(feature = "amqp")]
pub mod amqp;
pub(crate) mod paused;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

mod connect;
mod report;

pub use connect::{DEFAULT_URL, URL_ENV, connect, resolve_url};
pub use report::{BrokerHealth, InFlight, PollerCounts, PollerReport, Presence, ScheduledEvent};

/// An event taken from a queue, owned by this poller until it is acked,
/// retried, dead-lettered or released.
///
/// ```no_run
/// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
/// let queues = ["high".to_string(), "low".to_string()];
/// if let Some(delivery) = broker.take(&queues, std::time::Duration::from_secs(5)).await? {
///     let envelope = action_event::Envelope::from_slice(&delivery.body)?;
///     println!("{} from {}", envelope.name, delivery.queue);
///     broker.ack(&delivery).await?;
/// }
/// # Ok(()) }
/// ```
pub struct Delivery {
    /// The queue it was taken from.
    pub queue: String,
    /// The raw message: normally an [`Envelope`] document.
    pub body: Vec<u8>,
    /// Whether the broker handed it out before (a poller died holding it, or it was released).
    pub redelivered: bool,
    /// Backend-specific handle.
    pub tag: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// An event that will not be run again until a person retries it.
///
/// ```
/// use action_event::broker::DeadEvent;
/// let d = DeadEvent {
///     id: "1".into(), name: Some("hello_world".into()), queue: "medium".into(),
///     body: "{}".into(), attempts: 3, errors: vec![], reason: "boom".into(), died_at_ms: 0,
/// };
/// assert_eq!(d.attempts, 3);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadEvent {
    /// The event id (or, for a message that was not an envelope, an id the broker gave it).
    pub id: String,
    /// The event name, when the message could be read.
    pub name: Option<String>,
    /// The queue it was taken from.
    pub queue: String,
    /// The message as received (the raw body when it was not an envelope).
    pub body: String,
    /// How many times it ran.
    pub attempts: u32,
    /// Every error, oldest first.
    pub errors: Vec<AttemptError>,
    /// Why it died (the last error).
    pub reason: String,
    /// When it died, milliseconds since the Unix epoch.
    pub died_at_ms: u64,
}

/// Which dead events a command applies to.
///
/// ```
/// use action_event::broker::DeadFilter;
/// let f = DeadFilter { queue: Some("high".into()), ..Default::default() };
/// assert!(f.event.is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct DeadFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this event name.
    pub event: Option<String>,
    /// Only those that died before this time (ms since the Unix epoch).
    pub died_before_ms: Option<u64>,
}

/// Waiting events in one queue, as the broker counts them.
///
/// ```no_run
/// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
/// let depth = broker.depth("high").await?;
/// println!("{} waiting, oldest {:?}", depth.waiting, depth.oldest_age);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueDepth {
    /// Events ready to be taken now (due, not held by a poller).
    pub waiting: u64,
    /// Events not due yet (delayed, or waiting for a retry), when the broker
    /// can count them per queue: SQLite can; RabbitMQ keeps them in delay
    /// queues shared by every queue, so `None` there.
    pub scheduled: Option<u64>,
    /// Age of the oldest ready event, when the broker knows it.
    pub oldest_age: Option<Duration>,
}

/// What every backend does. See the module docs and `DESIGN.md`.
///
/// The poller calls [`Broker::take`] whenever it has a free slot; each
/// delivery ends in exactly one of [`Broker::ack`], [`Broker::retry`],
/// [`Broker::dead`] or [`Broker::release`]. A delivery whose poller dies goes
/// back to its queue by itself (SQLite: within a second, once another poller
/// sees its owner process gone, else when the lease lapses; RabbitMQ: the
/// channel closes).
///
/// ```no_run
/// use action_event::broker::{Broker, DeadEvent};
/// use action_event::Envelope;
/// use std::time::Duration;
///
/// // The life of one delivery, as the poller drives it.
/// async fn work_one(broker: &dyn Broker) -> Result<(), action_event::Error> {
///     let queues = ["high".to_string(), "medium".to_string(), "low".to_string()];
///     let Some(delivery) = broker.take(&queues, Duration::from_secs(1)).await? else {
///         return Ok(());
///     };
///     let envelope = Envelope::from_slice(&delivery.body)?;
///     // ... run it, then one of:
///     broker.ack(&delivery).await?;
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The URL, password redacted.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// println!("{}", broker.url()); // passwords redacted
    /// # Ok(()) }
    /// ```
    fn url(&self) -> String;

    /// Stores the event durably; returns once it would survive a crash.
    /// An envelope with `run_at_ms` in the future is not handed out before then.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// let envelope = action_event::Envelope::new("hello_world", "high", serde_json::json!({"name": "world"}));
    /// broker.publish(&envelope).await?;
    /// # Ok(()) }
    /// ```
    async fn publish(&self, envelope: &Envelope) -> Result<(), Error>;

    /// Takes the next ready event, trying `queues` in order (strict
    /// priority: a later queue is looked at only when every earlier one had
    /// nothing ready). Waits up to `wait` for one; `None` when none came.
    /// Paused queues ([`Broker::pause_queue`]) are left out.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// let taken = broker.take(&["high".to_string()], std::time::Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error>;

    /// Gives back what this broker took from the queues ahead of
    /// [`Broker::take`] and has not handed out, so that other pollers get
    /// it now: the poller calls it once it takes no more. Deliveries handed
    /// out stay owned. SQLite: the events a batch claim took ahead (see
    /// `sqlite` module docs); RabbitMQ does the same by itself when the
    /// connection closes. The default gives back nothing.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// broker.give_back().await?;
    /// # Ok(()) }
    /// ```
    async fn give_back(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The event finished (completed or halted): remove it.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// broker.ack(&delivery).await?;
    /// # Ok(()) }
    /// ```
    async fn ack(&self, delivery: &Delivery) -> Result<(), Error>;

    /// Replaces the delivery with `next` (its next attempt), not to be taken
    /// before `delay` from now. `next` is stored before the delivery is
    /// removed: a crash in between may duplicate, never lose.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// let mut next = action_event::Envelope::from_slice(&delivery.body)?;
    /// next.attempt += 1;
    /// broker.retry(&delivery, &next, std::time::Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    async fn retry(
        &self,
        delivery: &Delivery,
        next: &Envelope,
        delay: Duration,
    ) -> Result<(), Error>;

    /// Moves the delivery to the dead-letter store, as durably as
    /// [`Broker::publish`]: `dead` is stored before the delivery is removed,
    /// so a crash in between may leave both, never neither.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// let dead = action_event::broker::DeadEvent {
    ///     id: "1".into(), name: Some("hello_world".into()), queue: delivery.queue.clone(),
    ///     body: String::from_utf8_lossy(&delivery.body).into_owned(), attempts: 11,
    ///     errors: vec![], reason: "boom".into(), died_at_ms: action_event::envelope::now_ms(),
    /// };
    /// broker.dead(&delivery, &dead).await?;
    /// # Ok(()) }
    /// ```
    async fn dead(&self, delivery: &Delivery, dead: &DeadEvent) -> Result<(), Error>;

    /// Gives the delivery back to its queue untouched, to be taken again now.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// broker.release(&delivery).await?; // shutting down: someone else takes it
    /// # Ok(()) }
    /// ```
    async fn release(&self, delivery: &Delivery) -> Result<(), Error>;

    /// Dead events matching `filter`, oldest first.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// for dead in broker.dead_list(&Default::default()).await? {
    ///     println!("{} {}", dead.id, dead.reason);
    /// }
    /// # Ok(()) }
    /// ```
    async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error>;

    /// Puts dead events back on their queues with a fresh attempt count
    /// (attempt 1, no errors, due now); `id` `None` means every one matching
    /// `filter`. Returns how many. A dead event whose body is not an
    /// envelope (a foreign message kept raw) is not retried: it stays in the
    /// dead letters, with a warning, and is not counted.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// let filter = action_event::broker::DeadFilter { event: Some("hello_world".into()), ..Default::default() };
    /// let n = broker.dead_retry(None, &filter).await?;
    /// # Ok(()) }
    /// ```
    async fn dead_retry(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error>;

    /// Deletes dead events; `id` `None` means every one matching `filter`.
    /// Returns how many.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// let n = broker.dead_purge(Some("0190a0a0-0000-7000-8000-000000000000"), &Default::default()).await?;
    /// # Ok(()) }
    /// ```
    async fn dead_purge(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error>;

    /// How many events wait in `queue`.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker, delivery: action_event::broker::Delivery) -> Result<(), action_event::Error> {
    /// let waiting = broker.depth("medium").await?.waiting;
    /// # Ok(()) }
    /// ```
    async fn depth(&self, queue: &str) -> Result<QueueDepth, Error>;

    /// Every queue that holds an event now (ready, delayed or taken), when
    /// the backend can list them; `None` when it cannot (the default;
    /// RabbitMQ). `--exit-when-empty` uses it to name the queues a poller
    /// does not serve where events wait.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// if let Some(queues) = broker.queues_with_events().await? {
    ///     println!("events wait on {}", queues.join(", "));
    /// }
    /// # Ok(()) }
    /// ```
    async fn queues_with_events(&self) -> Result<Option<Vec<String>>, Error> {
        Ok(None)
    }

    /// Makes a running poller visible to [`Broker::pollers`] of any machine,
    /// for as long as this broker is open. RabbitMQ starts answering status
    /// requests with `presence.report()`; PostgreSQL and SQLite write it into
    /// the database every second; the default does nothing. An error means
    /// the poller is not visible yet; a backend may keep trying in the
    /// background.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # async fn run(broker: &dyn action_event::broker::Broker, presence: Arc<dyn action_event::broker::Presence>) -> Result<(), action_event::Error> {
    /// broker.announce(presence).await?;
    /// # Ok(()) }
    /// ```
    async fn announce(&self, presence: Arc<dyn Presence>) -> Result<(), Error> {
        let _ = presence;
        Ok(())
    }

    /// The live pollers of every machine on this broker (SQLite: every
    /// process using the file), collected for `wait`; `None` when the
    /// backend offers no such view (the default).
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// if let Some(pollers) = broker.pollers(std::time::Duration::from_secs(1)).await? {
    ///     for p in pollers {
    ///         println!("{} {} pid {}: {} in flight", p.id, p.host, p.pid, p.in_flight.len());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    async fn pollers(&self, wait: Duration) -> Result<Option<Vec<PollerReport>>, Error> {
        let _ = wait;
        Ok(None)
    }

    // --- pause ---

    /// Pauses `queue` for every poller on every machine, including pollers
    /// started later: [`Broker::take`] hands out none of its events until
    /// [`Broker::resume_queue`]. Events already running finish; events
    /// queued meanwhile wait, nothing is lost; the other queues keep their
    /// strict priority. The state is durable (it survives restarts of the
    /// pollers and of the broker). A poller sees the pause within 250 ms
    /// (each broker handle looks at most every 250 ms, never per event).
    /// Pausing a paused queue does nothing. The default (a backend without
    /// pausing) is an error naming the backend.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// broker.pause_queue("low").await?;
    /// assert!(broker.paused_queues().await?.contains(&"low".to_string()));
    /// broker.resume_queue("low").await?;
    /// # Ok(()) }
    /// ```
    async fn pause_queue(&self, queue: &str) -> Result<(), Error> {
        let _ = queue;
        Err(paused::unsupported(&self.url(), "pause a queue"))
    }

    /// Resumes a paused `queue`: pollers take its events again within
    /// 250 ms. Resuming a queue that is not paused does nothing. The default
    /// is an error naming the backend.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// broker.resume_queue("low").await?;
    /// # Ok(()) }
    /// ```
    async fn resume_queue(&self, queue: &str) -> Result<(), Error> {
        let _ = queue;
        Err(paused::unsupported(&self.url(), "resume a queue"))
    }

    /// The paused queues, sorted by name. SQLite and PostgreSQL list every
    /// one. RabbitMQ cannot list queues (without the management plugin): it
    /// reports the paused ones among `high`, `medium`, `low` and the queues
    /// this handle took from or paused; ask about others with
    /// [`Broker::paused_among`].
    /// The default is an error naming the backend.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// for q in broker.paused_queues().await? {
    ///     println!("{q} is paused");
    /// }
    /// # Ok(()) }
    /// ```
    async fn paused_queues(&self) -> Result<Vec<String>, Error> {
        Err(paused::unsupported(&self.url(), "list paused queues"))
    }

    /// Which of `queues` are paused, in the order given. The default asks
    /// [`Broker::paused_queues`]; RabbitMQ looks at exactly these queues.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// let served = ["high".to_string(), "low".to_string()];
    /// let paused = broker.paused_among(&served).await?;
    /// # Ok(()) }
    /// ```
    async fn paused_among(&self, queues: &[String]) -> Result<Vec<String>, Error> {
        let all = self.paused_queues().await?;
        Ok(queues.iter().filter(|q| all.contains(q)).cloned().collect())
    }

    // --- perf ---

    /// Stores every envelope durably, like [`Broker::publish`] on each, and
    /// returns once all of them are stored (RabbitMQ: every one confirmed).
    /// What an `Err` leaves depends on the backend: SQLite stores all or
    /// none (one transaction); RabbitMQ pipelines the publishes, so after
    /// an `Err` some may be stored (publishing the same envelopes again is
    /// safe: ids are kept, and the SQLite backend skips an id it has).
    /// The default publishes one at a time, stopping at the first error.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// use action_event::Envelope;
    /// let batch: Vec<Envelope> = (0..100)
    ///     .map(|i| Envelope::new("resize", "low", serde_json::json!({ "image": i })))
    ///     .collect();
    /// broker.publish_many(&batch).await?;
    /// # Ok(()) }
    /// ```
    async fn publish_many(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        for envelope in envelopes {
            self.publish(envelope).await?;
        }
        Ok(())
    }

    // --- periodic ---

    /// What this broker knows of the periodic ticks: whether it may queue
    /// them now and the last tick queued per event (see
    /// [`crate::periodic`]). The default: this backend has none.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// let state = broker.tick_state().await?;
    /// println!("holder: {}, last ticks: {:?}", state.holder, state.last);
    /// # Ok(()) }
    /// ```
    async fn tick_state(&self) -> Result<crate::periodic::TickState, Error> {
        Err(Error::broker(
            &self.url(),
            "this backend has no periodic ticks: periodic events need the SQLite, RabbitMQ or PostgreSQL backend",
        ))
    }

    /// Claims one tick: if the last tick of `claim.name` is still
    /// `claim.expected` (and, on RabbitMQ, this broker holds the lease),
    /// queues `claim.envelope` and records `claim.tick` as the last tick,
    /// together; `Ok(false)` when another poller was first.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// use action_event::periodic::TickClaim;
    /// let won = broker.tick_claim(&TickClaim { name: "sweep".into(), expected: None, tick: 0, envelope: None }).await?;
    /// # Ok(()) }
    /// ```
    async fn tick_claim(&self, claim: &crate::periodic::TickClaim) -> Result<bool, Error> {
        let _ = claim;
        Err(Error::broker(
            &self.url(),
            "this backend has no periodic ticks: periodic events need the SQLite, RabbitMQ or PostgreSQL backend",
        ))
    }

    /// The last tick queued per event, for `poller status` (RabbitMQ: as
    /// the lease holder last published it). The default: [`Broker::tick_state`]'s.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// for (event, tick) in broker.tick_last().await? {
    ///     println!("{event}: {}", action_event::periodic::format_tick(tick));
    /// }
    /// # Ok(()) }
    /// ```
    async fn tick_last(&self) -> Result<std::collections::BTreeMap<String, i64>, Error> {
        Ok(self.tick_state().await?.last)
    }

    // --- postgres ---

    /// This broker as the PostgreSQL broker, if it is one: transactional
    /// enqueue (`queue!(..).on(&mut tx)`, see [`Queueing`](crate::Queueing)) needs its schema. The default
    /// is `None` (every other backend).
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) {
    /// if let Some(pg) = broker.as_postgres() {
    ///     println!("tables in schema {}", pg.schema());
    /// }
    /// # }
    /// ```
    #[cfg(feature = "postgres")]
    fn as_postgres(&self) -> Option<&postgres::PostgresBroker> {
        None
    }

    // --- web ---

    /// Up to `limit` events not due yet (delayed, or waiting for a retry),
    /// soonest first, when the backend can list them without taking them:
    /// SQLite and PostgreSQL can; `None` (the default) when it cannot
    /// (RabbitMQ keeps them in per-delay queues that can only be read by
    /// consuming them).
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// match broker.scheduled_list(100).await? {
    ///     Some(events) => println!("{} scheduled", events.len()),
    ///     None => println!("this backend cannot list scheduled events"),
    /// }
    /// # Ok(()) }
    /// ```
    async fn scheduled_list(&self, limit: usize) -> Result<Option<Vec<ScheduledEvent>>, Error> {
        let _ = limit;
        Ok(None)
    }

    /// Stores, as one batch, every envelope `batch` yields, and returns
    /// their ids in order; the first `Err` it yields is this call's error,
    /// and then none of the batch is stored. What `queue_many` uses: a
    /// backend may store the first envelopes while the iterator still
    /// makes (and checks) the next ones, so long as a failed check leaves
    /// nothing stored (SQLite: the batch's transaction is rolled back).
    /// The default takes every envelope first, then calls
    /// [`Broker::publish_many`] (whose rules on errors apply).
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// use action_event::QueueRequest;
    /// let mut batch = (0..1000).map(|i| QueueRequest::new("resize").param("image", i).into_envelope());
    /// let ids = broker.publish_checked(&mut batch).await?;
    /// assert_eq!(ids.len(), 1000);
    /// # Ok(()) }
    /// ```
    async fn publish_checked(
        &self,
        batch: &mut (dyn Iterator<Item = Result<Envelope, Error>> + Send),
    ) -> Result<Vec<EventId>, Error> {
        let envelopes = batch.collect::<Result<Vec<Envelope>, Error>>()?;
        self.publish_many(&envelopes).await?;
        Ok(envelopes.iter().map(|e| e.id).collect())
    }

    // --- health ---

    /// What this backend knows is wrong with the broker itself: events it
    /// holds that will not run until an operator acts, each line naming the
    /// queue, the count and the fix (see [`BrokerHealth`]). `None` (the
    /// default) when the backend has no such check. RabbitMQ with
    /// `queue_type=quorum` looks for stalled dead-lettering through the
    /// management API (the `management` URL option); without the option it
    /// returns a note saying the check is off.
    ///
    /// ```no_run
    /// # async fn run(broker: &dyn action_event::broker::Broker) -> Result<(), action_event::Error> {
    /// if let Some(health) = broker.broker_health().await? {
    ///     for w in &health.warnings {
    ///         eprintln!("WARNING: {w}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    async fn broker_health(&self) -> Result<Option<BrokerHealth>, Error> {
        Ok(None)
    }
}
