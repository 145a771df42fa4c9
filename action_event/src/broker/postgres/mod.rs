//! The PostgreSQL backend: queues in tables of the app's own database, and
//! events queued in the app's own transaction.
//!
//! ```text
//! ACTION_EVENT_URL=postgres://app@db.internal/app?schema=action_event
//! ```
//!
//! # Why sqlx
//!
//! Transactional enqueue ([`Queueing::on`](crate::Queueing::on))
//! inserts the event with the app's own connection, inside the app's own
//! transaction: the library must take the transaction type of the driver
//! the app uses. sqlx is the driver most Rust web apps on PostgreSQL use
//! (with axum, actix, loco); its `Transaction<'_, Postgres>`,
//! `PgConnection` and `PgPool` all implement `sqlx::Acquire`, which is
//! what `.on(..)` takes. tokio-postgres would have been as good a driver
//! for the broker itself, but an app on sqlx could not pass its
//! transaction to it. The broker uses sqlx without its macros (no build
//! time database) and without TLS by default; it is re-exported as
//! [`crate::sqlx`] so the app can name the same version.
//!
//! # How it works
//!
//! | module      | what it owns                                                         |
//! |-------------|----------------------------------------------------------------------|
//! | [`options`] | the `postgres://` URL and its options (`schema`, `lease`, `poll`, `pool`, `migrate`) |
//! | [`schema`]  | the tables, versioned migrations under an advisory lock, the SQL for teams that apply it themselves |
//! | [`publish`] | storing events, one or many (multi-row insert), and in the app's transaction |
//! | [`claim`]   | taking events: strict priority, batch claims with `FOR UPDATE SKIP LOCKED` |
//! | [`ahead`]   | events a batch claim took and has not handed out yet, and giving them back |
//! | [`wait`]    | idle takes: one look per broker, waking on `LISTEN/NOTIFY`           |
//! | [`owner`]   | who holds a claim (a session advisory lock per broker), leases and their heartbeat, a dead poller's events back, poller status |
//! | [`settle`]  | ack, retry, release: only while the claim is still this delivery's   |
//! | [`dead`]    | dead letters: list, retry, purge                                     |
//! | [`depth`]   | counting a queue, listing scheduled events                           |
//! | [`pause`]   | paused queues: the table `paused_queues`                             |
//! | [`tick`]    | periodic ticks: one atomic claim per tick                            |
//! | [`transient`] | which sqlx errors are worth trying again ([`Error::is_transient`]) |
//!
//! Times (`visible_at`, leases, delays) are milliseconds of the clocks of
//! the machines that write them: keep them in sync (NTP), as for any job
//! system whose pollers run on several machines.
//!
//! ```no_run
//! # async fn run() -> Result<(), action_event::Error> {
//! use action_event::broker::Broker;
//! let broker = action_event::broker::postgres::PostgresBroker::open(
//!     "postgres://postgres@127.0.0.1/test?schema=jobs",
//! ).await?;
//! println!("{}", broker.url());
//! # Ok(()) }
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Broker, DeadEvent, DeadFilter, Delivery, PollerReport, Presence, QueueDepth};
use crate::envelope::{Envelope, now_ms};
use crate::{Error, redact_url};

pub mod ahead;
pub mod claim;
pub mod dead;
pub mod depth;
pub mod options;
pub mod owner;
pub mod pause;
pub mod publish;
pub mod schema;
pub mod settle;
pub mod tick;
pub mod transient;
pub mod wait;

pub use schema::{SCHEMA_VERSION, migration_sql};

/// [`migration_sql`] for the schema a `postgres://` URL names (`?schema=`,
/// default `action_event`): what `poller migrate --print` prints.
///
/// ```
/// let sql = action_event::broker::postgres::migration_sql_for_url("postgres://h/db?schema=jobs").unwrap();
/// assert!(sql.contains("CREATE TABLE jobs.events"));
/// ```
pub fn migration_sql_for_url(url: &str) -> Result<String, Error> {
    migration_sql(&Options::parse(url)?.schema)
}

use options::Options;

/// The PostgreSQL broker. See the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use action_event::broker::{Broker, postgres::PostgresBroker};
/// use action_event::Envelope;
///
/// # async fn run() -> Result<(), action_event::Error> {
/// let broker = PostgresBroker::open("postgres://postgres@127.0.0.1/test").await?;
/// broker.publish(&Envelope::new("hello_world", "high", serde_json::json!({}))).await?;
/// if let Some(d) = broker.take(&["high".to_string()], Duration::from_secs(1)).await? {
///     broker.ack(&d).await?;
/// }
/// # Ok(()) }
/// ```
pub struct PostgresBroker {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
}

/// What the broker's operations and background tasks share.
struct Inner {
    url: String,
    cfg: Options,
    pool: PgPool,
    /// This broker's row in `owners` (see [`owner`]).
    owner: i64,
    /// Wakes waiting takes; the last look that found nothing ([`wait`]).
    waiter: wait::Waiter,
    /// One claim at a time per broker (handing out needs no lock).
    claiming: tokio::sync::Mutex<()>,
    /// Takes inside `take` now: how many events a claim takes ([`claim`]).
    takers: AtomicUsize,
    /// Events claimed and not handed out yet ([`ahead`]).
    ahead: Mutex<VecDeque<ahead::Ahead>>,
    /// Rows claimed (handed out or ahead) and not settled: the heartbeat
    /// keeps their lease.
    held: Mutex<HashSet<i64>>,
    /// What `poller status` shows of this broker's poller, once announced.
    presence: Mutex<Option<Arc<dyn Presence>>>,
    /// The SQL of this schema, built once.
    sql: owner::Sql,
    /// This handle's copy of the paused queues ([`pause`]).
    paused: crate::broker::paused::PauseCache,
}

impl Inner {
    pub(super) fn err(&self, what: &str, e: sqlx::Error) -> Error {
        Error::broker_caused(&self.url, what.to_string(), e)
    }

    pub(super) fn lease_ms(&self) -> i64 {
        dur_ms(self.cfg.lease)
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn ahead(&self) -> std::sync::MutexGuard<'_, VecDeque<ahead::Ahead>> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for PostgresBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBroker")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresBroker {
    fn drop(&mut self) {
        // The heartbeat task holds this broker's owner lock: once it is gone,
        // the events still held come back to the other brokers at once.
        for t in &self.tasks {
            t.abort();
        }
        // Events claimed ahead go back as they were (not counted as a
        // delivery), if a runtime is there to do it.
        if !self.inner.ahead().is_empty()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let inner = self.inner.clone();
            rt.spawn(async move {
                if let Err(e) = ahead::give_back(&inner).await {
                    tracing::warn!(broker = %inner.url, "events claimed ahead not given back (they come back within a second, the owner gone): {e}");
                }
            });
        }
    }
}

impl PostgresBroker {
    /// Connects to the database the URL names, brings its schema up to
    /// date (unless `?migrate=off`), registers this broker as an owner and
    /// starts listening for new events and the lease heartbeat. Must be
    /// called inside a Tokio runtime.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let broker = action_event::broker::postgres::PostgresBroker::open(
    ///     "postgresql://app:secret@db/app?schema=jobs&lease=1m",
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<PostgresBroker, Error> {
        let cfg = Options::parse(url)?;
        let redacted = redact_url(url);
        let connect: PgConnectOptions = cfg.connect_url.parse().map_err(|e| Error::BadUrl {
            url: redacted.clone(),
            message: format!("{e}"),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(cfg.pool)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            .idle_timeout(Some(Duration::from_secs(60)))
            .connect_with(connect)
            .await
            .map_err(|e| {
                Error::broker_caused(&redacted, "cannot connect to PostgreSQL".to_string(), e)
            })?;
        {
            let mut conn = pool
                .acquire()
                .await
                .map_err(|e| Error::broker_caused(&redacted, "connect".to_string(), e))?;
            if cfg.migrate {
                schema::migrate(&mut conn, &redacted, &cfg.schema).await?;
            } else {
                schema::check(&mut conn, &redacted, &cfg.schema).await?;
            }
        }
        let sql = owner::Sql::new(&cfg.schema);
        let listener = owner::listener(&pool, &redacted, &cfg.schema).await?;
        let (owner, owner_conn) = owner::register(&pool, &redacted, &cfg.schema, &sql).await?;
        let inner = Arc::new(Inner {
            url: redacted,
            cfg,
            pool,
            owner,
            waiter: wait::Waiter::default(),
            claiming: tokio::sync::Mutex::new(()),
            takers: AtomicUsize::new(0),
            ahead: Mutex::new(VecDeque::new()),
            held: Mutex::new(HashSet::new()),
            presence: Mutex::new(None),
            sql,
            paused: Default::default(),
        });
        // The events of pollers that died come back now.
        if let Err(e) = owner::reclaim_gone(&inner).await {
            tracing::warn!(broker = %inner.url, "{e}");
        }
        let tasks = vec![
            tokio::spawn(owner::listen(Arc::downgrade(&inner), listener)).abort_handle(),
            tokio::spawn(owner::heartbeat(Arc::downgrade(&inner), owner_conn)).abort_handle(),
        ];
        Ok(PostgresBroker { inner, tasks })
    }

    /// Applies the migrations the database lacks and returns the versions
    /// applied (none when it is up to date): what `poller migrate` runs.
    /// Safe to run from several processes at once.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let applied = action_event::broker::postgres::PostgresBroker::migrate(
    ///     "postgres://postgres@127.0.0.1/test?schema=jobs",
    /// ).await?;
    /// println!("applied {applied:?}");
    /// # Ok(()) }
    /// ```
    pub async fn migrate(url: &str) -> Result<Vec<i32>, Error> {
        use sqlx::Connection;
        let cfg = Options::parse(url)?;
        let redacted = redact_url(url);
        let mut conn = sqlx::PgConnection::connect(&cfg.connect_url)
            .await
            .map_err(|e| {
                Error::broker_caused(&redacted, "cannot connect to PostgreSQL".to_string(), e)
            })?;
        let applied = schema::migrate(&mut conn, &redacted, &cfg.schema).await?;
        let _ = conn.close().await;
        Ok(applied)
    }

    /// The schema this broker's tables are in.
    ///
    /// ```no_run
    /// # async fn run(b: action_event::broker::postgres::PostgresBroker) {
    /// assert_eq!(b.schema(), "action_event");
    /// # }
    /// ```
    pub fn schema(&self) -> &str {
        &self.inner.cfg.schema
    }

    /// The connection pool the broker uses (for tests and tools that look
    /// at its tables).
    ///
    /// ```no_run
    /// # async fn run(b: action_event::broker::postgres::PostgresBroker) -> Result<(), action_event::sqlx::Error> {
    /// let n: i64 = action_event::sqlx::query_scalar("SELECT count(*) FROM action_event.events")
    ///     .fetch_one(b.pool()).await?;
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Inserts `envelopes` with the app's connection (in its transaction),
    /// in one statement: [`crate::Queueing`]'s and [`crate::QueueingMany`]'s
    /// `.on(..)`.
    pub(crate) async fn insert_on(
        &self,
        conn: &mut sqlx::PgConnection,
        envelopes: &[Envelope],
    ) -> Result<(), Error> {
        let n = publish::insert_on(conn, &self.inner.sql.insert, envelopes)
            .await
            .map_err(|e| {
                let what = match envelopes {
                    [one] => format!("event `{}`", one.name),
                    [first, ..] => {
                        format!("{} events (the first `{}`)", envelopes.len(), first.name)
                    }
                    [] => "no event".to_string(),
                };
                Error::broker_caused(
                    &self.inner.url,
                    format!(
                        "{what}: queueing in the app's transaction (is the app's connection \
                         on the database of this URL, schema `{}`?)",
                        self.inner.cfg.schema
                    ),
                    e,
                )
            })?;
        if n < envelopes.len() as u64 {
            tracing::debug!(
                broker = %self.inner.url,
                "{} event(s) already queued: not stored twice",
                envelopes.len() as u64 - n
            );
        }
        Ok(())
    }

    fn tag<'a>(&self, delivery: &'a Delivery) -> Result<&'a claim::Tag, Error> {
        delivery.tag.downcast_ref::<claim::Tag>().ok_or_else(|| {
            Error::broker(
                &self.inner.url,
                "this delivery was not taken from a PostgreSQL broker",
            )
        })
    }
}

#[async_trait]
impl Broker for PostgresBroker {
    fn url(&self) -> String {
        self.inner.url.clone()
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), Error> {
        publish::publish(&self.inner, envelope).await
    }

    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error> {
        crate::broker::paused::take(self, queues, wait).await
    }

    async fn give_back(&self) -> Result<(), Error> {
        ahead::give_back(&self.inner).await.map(|_| ())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        settle::ack(&self.inner, self.tag(delivery)?).await
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        next: &Envelope,
        delay: Duration,
    ) -> Result<(), Error> {
        settle::retry(&self.inner, self.tag(delivery)?, next, delay).await
    }

    async fn dead(&self, delivery: &Delivery, dead: &DeadEvent) -> Result<(), Error> {
        dead::dead(&self.inner, self.tag(delivery)?, dead).await
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), Error> {
        settle::release(&self.inner, self.tag(delivery)?).await
    }

    async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error> {
        dead::dead_list(&self.inner, filter).await
    }

    async fn dead_retry(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        dead::dead_retry(&self.inner, id, filter).await
    }

    async fn dead_purge(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        dead::dead_purge(&self.inner, id, filter).await
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, Error> {
        depth::depth(&self.inner, queue).await
    }

    async fn queues_with_events(&self) -> Result<Option<Vec<String>>, Error> {
        depth::queues_with_events(&self.inner).await
    }

    async fn announce(&self, presence: Arc<dyn Presence>) -> Result<(), Error> {
        owner::announce(&self.inner, presence).await
    }

    async fn pollers(&self, wait: Duration) -> Result<Option<Vec<PollerReport>>, Error> {
        let _ = wait;
        owner::pollers(&self.inner).await.map(Some)
    }

    async fn publish_many(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        publish::publish_many(&self.inner, envelopes).await
    }

    fn as_postgres(&self) -> Option<&PostgresBroker> {
        Some(self)
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

    async fn tick_state(&self) -> Result<crate::periodic::TickState, Error> {
        tick::state(&self.inner).await
    }

    async fn tick_claim(&self, claim: &crate::periodic::TickClaim) -> Result<bool, Error> {
        tick::claim(&self.inner, claim).await
    }

    async fn scheduled_list(
        &self,
        limit: usize,
    ) -> Result<Option<Vec<super::ScheduledEvent>>, Error> {
        depth::scheduled_list(&self.inner, limit).await
    }
}

pub(super) fn now_i64() -> i64 {
    ms_i64(now_ms())
}

pub(super) fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

pub(super) fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
