//! The broker boundary: every backend implements [`Broker`], and nothing above
//! it (the poller, `queue!`) knows which backend it talks to.
//!
//! A backend is chosen by one URL ([`connect`]): `sqlite://path.db` (the
//! default, [`DEFAULT_URL`]) or `amqp://user:pass@host:5672/vhost`.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::envelope::{AttemptError, Envelope};
use crate::{Error, redact_url};

pub mod amqp;
pub mod sqlite;

/// The URL used when neither `--broker` nor `ACTION_EVENT_URL` is set.
pub const DEFAULT_URL: &str = "sqlite://action_event.db";

/// The environment variable that names the broker.
pub const URL_ENV: &str = "ACTION_EVENT_URL";

/// The URL to use: the given one, else `ACTION_EVENT_URL`, else [`DEFAULT_URL`].
///
/// ```
/// assert_eq!(action_event::broker::resolve_url(Some("sqlite://x.db")), "sqlite://x.db");
/// ```
pub fn resolve_url(explicit: Option<&str>) -> String {
    match explicit {
        Some(u) => u.to_string(),
        None => std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_string()),
    }
}

/// Opens the backend that `url` names. An unknown scheme or an unreachable
/// broker is an error that shows the URL with its password redacted.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, Error> {
    let scheme = url.split("://").next().unwrap_or("");
    if !url.contains("://") {
        return Err(Error::BadUrl {
            url: redact_url(url),
            message: "expected `scheme://...`, e.g. `sqlite://action_event.db` or `amqp://guest:guest@127.0.0.1:5672/%2f`".into(),
        });
    }
    match scheme {
        "sqlite" => Ok(Arc::new(sqlite::SqliteBroker::open(url).await?)),
        "amqp" | "amqps" => Ok(Arc::new(amqp::AmqpBroker::open(url).await?)),
        other => Err(Error::BadUrl {
            url: redact_url(url),
            message: format!("unknown scheme `{other}`: use `sqlite://` or `amqp://`"),
        }),
    }
}

/// An event taken from a queue, owned by this poller until it is acked,
/// retried, dead-lettered or released.
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueDepth {
    /// Events ready or scheduled, not held by a poller.
    pub waiting: u64,
    /// Age of the oldest waiting event, when the broker knows it.
    pub oldest_age: Option<Duration>,
}

/// What every backend does. See the module docs and `DESIGN.md`.
///
/// The poller calls [`Broker::take`] whenever it has a free slot; each
/// delivery ends in exactly one of [`Broker::ack`], [`Broker::retry`],
/// [`Broker::dead`] or [`Broker::release`]. A delivery whose poller dies goes
/// back to its queue by itself (SQLite: the lease lapses; RabbitMQ: the
/// channel closes).
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The URL, password redacted.
    fn url(&self) -> String;

    /// Stores the event durably; returns once it would survive a crash.
    /// An envelope with `run_at_ms` in the future is not handed out before then.
    async fn publish(&self, envelope: &Envelope) -> Result<(), Error>;

    /// Takes the next ready event, trying `queues` in order (strict
    /// priority: a later queue is looked at only when every earlier one had
    /// nothing ready). Waits up to `wait` for one; `None` when none came.
    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error>;

    /// The event finished (completed or halted): remove it.
    async fn ack(&self, delivery: &Delivery) -> Result<(), Error>;

    /// Replaces the delivery with `next` (its next attempt), not to be taken
    /// before `delay` from now. `next` is stored before the delivery is
    /// removed: a crash in between may duplicate, never lose.
    async fn retry(&self, delivery: &Delivery, next: &Envelope, delay: Duration) -> Result<(), Error>;

    /// Moves the delivery to the dead-letter store.
    async fn dead(&self, delivery: &Delivery, dead: &DeadEvent) -> Result<(), Error>;

    /// Gives the delivery back to its queue untouched, to be taken again now.
    async fn release(&self, delivery: &Delivery) -> Result<(), Error>;

    /// Dead events matching `filter`, oldest first.
    async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error>;

    /// Puts dead events back on their queues with a fresh attempt count;
    /// `id` `None` means every one matching `filter`. Returns how many.
    async fn dead_retry(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error>;

    /// Deletes dead events; `id` `None` means every one matching `filter`.
    /// Returns how many.
    async fn dead_purge(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error>;

    /// How many events wait in `queue`.
    async fn depth(&self, queue: &str) -> Result<QueueDepth, Error>;
}
