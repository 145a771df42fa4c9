//! The embedded default backend: every queue lives in one SQLite file.
//!
//! One file is shared by any number of brokers in any number of processes
//! on one machine. A poller owns each event it takes through a lease that
//! its heartbeat keeps; a batch claim takes a few events ahead of the
//! poller's free slots. Every operation is one short transaction, run on
//! the calling thread unless SQLite has to wait for another process.
//!
//! # Where things are
//!
//! Each module's docs describe its part: read [`options`] for the URL,
//! [`schema`] for sharing and durability, [`claim`] and [`lease`] for who
//! owns an event.
//!
//! | module      | what it owns                                                         |
//! |-------------|----------------------------------------------------------------------|
//! | [`options`] | the `sqlite://` URL and its options (`lease`, `synchronous`, `busy_timeout`, `poll`, `batch`) |
//! | [`schema`]  | opening the file: WAL, sharing, durability, the schema and its version |
//! | [`conn`]    | the connection, running an operation here or on the blocking pool, group commit (*Cost*) |
//! | [`publish`] | storing events                                                       |
//! | [`claim`]   | taking events: strict priority, the lease (*Ownership*)              |
//! | [`ahead`]   | events claimed ahead by a batch claim, and giving them back          |
//! | [`lease`]   | the heartbeat that keeps leases alive                                |
//! | [`owner`]   | who holds a claim: a poller that died gives its events back at once  |
//! | [`settle`]  | ack, retry, release: only while the claim is still this delivery's   |
//! | [`dead`]    | dead letters: list, retry, purge                                     |
//! | [`depth`]   | counting a queue                                                     |
//! | [`pause`]   | paused queues: the table `paused_queues`                             |
//! | [`presence`] | poller reports for `poller status` and the dashboard                |
//! | [`tick`]    | periodic ticks: one atomic claim per tick                            |
//!
//! ```no_run
//! # async fn run() -> Result<(), action_event::Error> {
//! use action_event::broker::Broker;
//! let broker = action_event::broker::sqlite::SqliteBroker::open("sqlite://action_event.db").await?;
//! println!("{}", broker.url());
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Broker, DeadEvent, DeadFilter, Delivery, QueueDepth};
use crate::envelope::{Envelope, now_ms};
use crate::{Error, redact_url};

pub mod ahead;
pub mod claim;
pub mod conn;
pub mod dead;
pub mod depth;
pub mod lease;
pub mod options;
pub mod owner;
pub mod pause;
pub mod presence;
pub mod publish;
pub mod schema;
pub mod settle;
pub mod tick;

pub use schema::SCHEMA_VERSION;

use claim::Tag;
use conn::{Inner, State};
use options::Options;

/// The SQL the broker runs for every event (name, statement), exposed so a
/// test can check with `EXPLAIN QUERY PLAN` that each one searches an index
/// instead of scanning the `events` table.
///
/// ```
/// use action_event::broker::sqlite::HOT_QUERIES;
/// assert!(HOT_QUERIES.iter().any(|(name, _)| *name == "claim"));
/// ```
#[doc(hidden)]
pub const HOT_QUERIES: &[(&str, &str)] = &[
    ("claim", claim::CLAIM_SELECT),
    ("claim_batch", claim::CLAIM_BATCH),
    ("unclaim", ahead::UNCLAIM),
    ("claim_update", claim::CLAIM_UPDATE),
    ("extend", lease::EXTEND),
    ("ack", settle::ACK),
    ("retry", settle::RETRY),
    ("release", settle::RELEASE),
    ("insert", publish::INSERT),
    ("depth", depth::DEPTH),
];

/// The embedded broker: queues, scheduled events and dead letters in one
/// SQLite file, shared by any number of processes. See [`options`] for the
/// URL options, [`schema`] for durability and [`claim`] for the lease.
///
/// ```no_run
/// use std::time::Duration;
/// use action_event::broker::{Broker, sqlite::SqliteBroker};
/// use action_event::Envelope;
///
/// # async fn run() -> Result<(), action_event::Error> {
/// let broker = SqliteBroker::open("sqlite://action_event.db?lease=1m").await?;
/// broker.publish(&Envelope::new("hello_world", "high", serde_json::json!({}))).await?;
/// let queues = vec!["high".to_string(), "low".to_string()];
/// if let Some(delivery) = broker.take(&queues, Duration::from_secs(1)).await? {
///     broker.ack(&delivery).await?;
/// }
/// # Ok(()) }
/// ```
pub struct SqliteBroker {
    inner: Arc<Inner>,
    heartbeat: tokio::task::AbortHandle,
    /// This handle's copy of the paused queues ([`pause`]).
    paused: crate::broker::paused::PauseCache,
    /// The poller report this handle keeps in the file ([`presence`]).
    presence: std::sync::Mutex<Option<presence::Announced>>,
}

impl std::fmt::Debug for SqliteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBroker")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl Drop for SqliteBroker {
    fn drop(&mut self) {
        // Without the heartbeat, the leases of deliveries still held lapse
        // and other pollers get those events again.
        self.heartbeat.abort();
        let announced = self
            .presence
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(a) = &announced {
            a.task.abort();
        }
        // Events claimed ahead go back now, not when their lease lapses (a
        // write: it may wait up to `busy_timeout` for another process).
        let inner = &self.inner;
        let Ok(mut state) = inner.state.try_lock() else {
            return;
        };
        if let Err(e) = inner.waiting(&mut state, |state| {
            ahead::unclaim_ahead(inner, state, |_| true)
        }) {
            tracing::warn!(broker = %inner.url, "events claimed ahead not given back (they come back when their lease lapses): {e}");
        }
        // With nothing held, this broker's row in `owners` goes (with
        // something held, it stays: the process lives, the lease decides).
        if let Some(id) = state.owner
            && state.held.is_empty()
            && let Err(e) = inner.waiting(&mut state, |state| {
                owner::unregister(&state.conn, id).map_err(|e| inner.err("owner", e))
            })
        {
            tracing::debug!(broker = %inner.url, "owner #{id} not removed: {e}");
        }
        // This poller's report goes (else the next reader deletes it once
        // the process is gone).
        if let Some(a) = announced
            && let Err(e) = inner.waiting(&mut state, |state| presence::delete(inner, state, a.id))
        {
            tracing::debug!(broker = %inner.url, "poller report #{} not removed: {e}", a.id);
        }
    }
}

impl SqliteBroker {
    /// Opens (creating when missing) the database file the URL names, sets
    /// it up (WAL, `busy_timeout`, `synchronous`, schema) and starts the
    /// lease heartbeat. Must be called inside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let broker = action_event::broker::sqlite::SqliteBroker::open(
    ///     "sqlite:///var/lib/app/events.db?synchronous=full&poll=50ms",
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<SqliteBroker, Error> {
        let cfg = Options::parse(url)?;
        let redacted = redact_url(url);
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::broker(
                &redacted,
                format!("must be opened inside a Tokio runtime: {e}"),
            )
        })?;
        let conn = {
            let (cfg, url) = (cfg.clone(), redacted.clone());
            tokio::task::spawn_blocking(move || schema::open_connection(&url, &cfg))
                .await
                .map_err(|e| {
                    Error::broker(&redacted, format!("opening the database failed: {e}"))
                })??
        };
        let inner = Arc::new(Inner {
            url: redacted,
            cfg,
            state: Arc::new(tokio::sync::Mutex::new(State::new(conn))),
            publishes: std::sync::Mutex::new(Vec::new()),
            acks: std::sync::Mutex::new(Vec::new()),
            claiming: Default::default(),
            checkpointing: Default::default(),
        });
        let every = (inner.cfg.lease / 3).max(Duration::from_millis(1));
        let heartbeat = runtime
            .spawn(lease::heartbeat(Arc::downgrade(&inner), every))
            .abort_handle();
        Ok(SqliteBroker {
            inner,
            heartbeat,
            paused: Default::default(),
            presence: std::sync::Mutex::new(None),
        })
    }

    fn tag<'a>(&self, delivery: &'a Delivery) -> Result<&'a Tag, Error> {
        delivery.tag.downcast_ref::<Tag>().ok_or_else(|| {
            Error::broker(
                &self.inner.url,
                "this delivery was not taken from a SQLite broker",
            )
        })
    }
}

#[async_trait]
impl Broker for SqliteBroker {
    fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// Concurrent publishes are committed together (group commit): each
    /// returns once the transaction holding its row committed.
    async fn publish(&self, envelope: &Envelope) -> Result<(), Error> {
        publish::publish(self, envelope).await
    }

    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error> {
        crate::broker::paused::take(self, queues, wait).await
    }

    async fn give_back(&self) -> Result<(), Error> {
        ahead::give_back(self).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        settle::ack(self, delivery).await
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        next: &Envelope,
        delay: Duration,
    ) -> Result<(), Error> {
        settle::retry(self, delivery, next, delay).await
    }

    async fn dead(&self, delivery: &Delivery, dead: &DeadEvent) -> Result<(), Error> {
        dead::dead(self, delivery, dead).await
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), Error> {
        settle::release(self, delivery).await
    }

    async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error> {
        dead::dead_list(self, filter).await
    }

    async fn dead_retry(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        dead::dead_retry(self, id, filter).await
    }

    async fn dead_purge(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        dead::dead_purge(self, id, filter).await
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, Error> {
        depth::depth(self, queue).await
    }

    async fn queues_with_events(&self) -> Result<Option<Vec<String>>, Error> {
        depth::queues_with_events(self).await
    }

    async fn pause_queue(&self, queue: &str) -> Result<(), Error> {
        pause::pause(self, queue, true).await
    }

    async fn resume_queue(&self, queue: &str) -> Result<(), Error> {
        pause::pause(self, queue, false).await
    }

    async fn paused_queues(&self) -> Result<Vec<String>, Error> {
        pause::list(self).await
    }

    // --- perf ---

    /// One transaction: every envelope is stored, or none.
    async fn publish_many(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        publish::publish_many(self, envelopes).await
    }

    /// One transaction, written while the batch is still being made.
    async fn publish_checked(
        &self,
        batch: &mut (dyn Iterator<Item = Result<Envelope, Error>> + Send),
    ) -> Result<Vec<crate::EventId>, Error> {
        publish::publish_checked(self, batch).await
    }

    async fn tick_state(&self) -> Result<crate::periodic::TickState, Error> {
        tick::state(self).await
    }

    async fn tick_claim(&self, claim: &crate::periodic::TickClaim) -> Result<bool, Error> {
        tick::claim(self, claim).await
    }

    async fn scheduled_list(
        &self,
        limit: usize,
    ) -> Result<Option<Vec<crate::broker::ScheduledEvent>>, Error> {
        depth::scheduled_list(self, limit).await
    }

    // --- status ---

    /// The poller's row in `poller_reports`, rewritten every second.
    async fn announce(&self, presence: Arc<dyn super::Presence>) -> Result<(), Error> {
        presence::announce(self, presence).await
    }

    /// Every live poller of this file (all of one machine).
    async fn pollers(&self, wait: Duration) -> Result<Option<Vec<super::PollerReport>>, Error> {
        let _ = wait;
        presence::pollers(self).await
    }
}

fn now_i64() -> i64 {
    ms_i64(now_ms())
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
