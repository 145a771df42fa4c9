//! What a running poller says about itself: [`PollerReport`] (for
//! `poller status` and the dashboard), made visible by a [`Presence`], and
//! the [`ScheduledEvent`]s a backend can list.

use serde::{Deserialize, Serialize};

/// One event a poller is running now, as [`PollerReport`] shows it.
///
/// ```
/// use action_event::broker::InFlight;
/// let e = InFlight { id: "0190a0a0".into(), name: "record".into(), queue: "medium".into(), started_at_ms: 0 };
/// assert_eq!(e.name, "record");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The event id (`?` for a message that is not an envelope).
    pub id: String,
    /// The event name (`?` when unreadable).
    pub name: String,
    /// The queue it was taken from.
    pub queue: String,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// What a live poller says about itself when `poller status` asks the
/// broker (see [`Broker::pollers`](super::Broker::pollers)).
///
/// ```
/// use action_event::broker::PollerReport;
/// let r = PollerReport {
///     id: "1".into(), host: "web1".into(), pid: 42, queues: vec!["high".into()],
///     concurrency: 4, broker: "amqp://guest:***@127.0.0.1:5672/%2f".into(),
///     started_at_ms: 0, in_flight: vec![], counts: Default::default(),
///     version: "0.1.0".into(),
/// };
/// let json = serde_json::to_string(&r).unwrap();
/// assert_eq!(serde_json::from_str::<PollerReport>(&json).unwrap(), r);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollerReport {
    /// The poller id (`--id`), `-` when it has none.
    pub id: String,
    /// The machine it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it serves, highest priority first.
    pub queues: Vec<String>,
    /// How many events it runs at once.
    pub concurrency: usize,
    /// Its broker URL, password redacted.
    pub broker: String,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// The events it is running now.
    pub in_flight: Vec<InFlight>,
    /// What it has run since it started (the dashboard's per-second chart
    /// is made of the differences). Absent in the reports of older pollers:
    /// all zero then.
    #[serde(default)]
    pub counts: PollerCounts,
    /// The action_event version the poller runs (empty from older pollers).
    #[serde(default)]
    pub version: String,
}

/// How many runs a poller has finished since it started, by outcome; part
/// of its [`PollerReport`]. Every run counts once in `processed` and at
/// most once in one of the others.
///
/// ```
/// use action_event::broker::PollerCounts;
/// let c = PollerCounts { processed: 10, failed: 3, retried: 2, dead: 1 };
/// assert_eq!(c.failed, c.retried + c.dead);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollerCounts {
    /// Runs finished, whatever the outcome (completed, halted, retried, dead).
    pub processed: u64,
    /// Runs that failed: retried or dead.
    pub failed: u64,
    /// Failures scheduled for another attempt.
    pub retried: u64,
    /// Events moved to the dead letters.
    pub dead: u64,
}

/// An event stored for later: delayed by its producer, or waiting for its
/// next attempt after a failure ([`Broker::scheduled_list`](super::Broker::scheduled_list)).
///
/// ```
/// use action_event::broker::ScheduledEvent;
/// let s = ScheduledEvent { id: "1".into(), name: Some("hello_world".into()), queue: "high".into(),
///     attempt: 2, due_at_ms: 0, body: "{}".into() };
/// assert_eq!(s.attempt, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    /// The event id.
    pub id: String,
    /// The event name, when the body is an envelope.
    pub name: Option<String>,
    /// The queue it will be taken from.
    pub queue: String,
    /// Its attempt number (1: never ran; more: a retry).
    pub attempt: u32,
    /// When it becomes ready, ms since the Unix epoch.
    pub due_at_ms: u64,
    /// The stored message.
    pub body: String,
}

/// A running poller, as [`Broker::announce`](super::Broker::announce) makes it visible: asked for a
/// fresh [`PollerReport`] on every status request.
///
/// ```
/// use action_event::broker::{PollerReport, Presence};
/// struct Fixed(PollerReport);
/// impl Presence for Fixed {
///     fn report(&self) -> PollerReport { self.0.clone() }
/// }
/// ```
pub trait Presence: Send + Sync {
    /// This poller now. Called on a broker task: keep it quick.
    fn report(&self) -> PollerReport;
}

/// What a backend knows is wrong with the broker itself, for the poller's
/// log, `poller status` and the dashboard (see
/// [`Broker::broker_health`](super::Broker::broker_health)).
///
/// `warnings` name a queue, a count and the fix: events the broker holds
/// and will not hand out until an operator acts (RabbitMQ 3.10: a stalled
/// dead-letter worker). `notes` are not problems: a check that is off, and
/// how to turn it on.
///
/// ```
/// use action_event::broker::BrokerHealth;
/// let h = BrokerHealth::default();
/// assert!(h.warnings.is_empty() && h.notes.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerHealth {
    /// One line each: the queue, how many events, since when, the fix.
    pub warnings: Vec<String>,
    /// One line each: a check that did not run, and why.
    pub notes: Vec<String>,
}
