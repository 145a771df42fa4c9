//! The embedded default backend: every queue lives in one SQLite file.
//!
//! # URL
//!
//! `sqlite://relative/path.db` or `sqlite:///absolute/path.db`, with optional
//! query options:
//!
//! | option         | default  | meaning                                                        |
//! |----------------|----------|----------------------------------------------------------------|
//! | `lease`        | `30s`    | how long a taken event stays invisible without a heartbeat     |
//! | `synchronous`  | `normal` | `normal` or `full` (see *Durability*)                           |
//! | `busy_timeout` | `5s`     | how long to wait for another process's write lock              |
//! | `poll`         | `100ms`  | longest sleep between two looks at an idle queue               |
//! | `batch`        | `8`      | events one claim takes from a queue with a backlog (see *Claiming ahead*) |
//!
//! e.g. `sqlite://var/events.db?lease=2m&synchronous=full`. An unknown option
//! or a bad value is an [`Error::BadUrl`] naming it. The parent directory is
//! created when missing.
//!
//! # Sharing
//!
//! One file is shared by any number of brokers in any number of processes on
//! one machine: the database runs in WAL mode, every write transaction starts
//! with `BEGIN IMMEDIATE`, and a writer that finds the file locked waits up to
//! `busy_timeout`. (WAL needs shared memory: do not put the file on a network
//! file system.)
//!
//! # Durability
//!
//! [`Broker::publish`] and every state change return after their transaction
//! committed. With the default `synchronous=normal`, a committed transaction
//! survives any crash of any process (including `kill -9` of the poller in
//! the middle of a write); only an operating-system crash or a power loss
//! may lose the last transactions before the WAL is synced.
//! `synchronous=full` syncs the WAL on every commit and also survives an OS
//! crash or power loss, at the cost of one `fsync` per write.
//!
//! # Ownership: a lease
//!
//! An event row is *ready* when `visible_at <= now`. [`Broker::take`] claims the
//! first ready row of the first queue (strict priority, in the order given)
//! in one `BEGIN IMMEDIATE` transaction: it sets `visible_at = now + lease`,
//! stores a fresh random claim token and counts the delivery. A heartbeat task
//! of the broker extends the lease of every delivery it holds every
//! `lease / 3`, so a live poller keeps an event as long as its handler runs;
//! the events of a poller that died become ready again once their lease
//! lapses, and are handed out with `redelivered = true`.
//!
//! [`Broker::ack`], [`Broker::retry`], [`Broker::dead`] and
//! [`Broker::release`] only touch the row while it still carries the
//! delivery's claim token. Each of them also stops the heartbeat for that
//! delivery, *even when it fails*: a poller that cannot settle an event
//! retries a few times within the lease, then gives up, and the event must
//! then come back once its lease lapses instead of staying hidden for as
//! long as that poller lives. If the lease lapsed (the poller stalled longer than
//! `lease`) and another poller took the event, the row is left alone and a
//! warning says the event may run twice.
//!
//! # Claiming ahead
//!
//! A claim takes up to `batch` ready events of the first queue that has
//! any, in one transaction: the first is handed out, the others wait in the
//! broker, claimed (leased, kept alive by the heartbeat like events in
//! hand), and are handed out by the next `take`s without another write,
//! each only after a read finds no ready event in a queue listed before
//! its own: strict priority holds at hand-out, not only at claim. Events
//! claimed ahead count in [`Broker::depth`] neither as waiting nor as
//! scheduled, like events in hand. They go back, with their place in the
//! queue and their delivery count as they were, when the poller stops
//! taking ([`Broker::give_back`]), when the broker is dropped, and once
//! they waited more than 1 s (looked for every 0.5 s), so a poller
//! busy with long events does not keep them from other pollers; if the
//! process dies, they come back when their lease lapses, like events in
//! hand. `batch=1` claims one at a time.
//! Measured (bench, draining 100,000 events against a rusqlite loop that
//! claims and deletes one row at a time): one claim per event ran at 0.71x
//! / 0.81x / 0.84x its rate at concurrency 1 / 8 / 64, batches of 8 at
//! 1.07x / 1.63x / 1.56x.
//!
//! # Cost
//!
//! Claiming is one index range scan per queue looked at (index
//! `events(queue, visible_at, id)`), so it costs the same with ten or a
//! million events waiting; see [`HOT_QUERIES`].
//!
//! An operation takes tens of microseconds, less than handing it to another
//! thread and back, so it runs on the calling task's thread while SQLite
//! need not wait: a busy handler refuses to wait for another connection's
//! write lock, and only then is the operation run again on Tokio's blocking
//! pool, where it waits up to `busy_timeout`. (Such a refusal happens when
//! the lock is taken, before the operation changed anything.) SQLite's
//! automatic WAL checkpoint, every 1000 pages, also runs on the calling
//! thread, for about a millisecond.
//!
//! Publishes that wait for the connection at the same time are committed
//! together, in one transaction (group commit); each still returns only once
//! its row is committed. Acks are grouped the same way, so at high
//! concurrency one write transaction settles many events.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, TransactionBehavior, params};

use super::{Broker, DeadEvent, DeadFilter, Delivery, QueueDepth};
use crate::envelope::{AttemptError, Envelope, now_ms};
use crate::{Error, redact_url};

/// The schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_POLL: Duration = Duration::from_millis(100);
const FIRST_POLL: Duration = Duration::from_millis(5);
const DEFAULT_BATCH: u32 = 8;
/// How long an event claimed ahead may wait in the broker before the
/// heartbeat gives it back (see *Claiming ahead*).
const AHEAD_MAX: Duration = Duration::from_secs(1);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    queue       TEXT NOT NULL,
    name        TEXT,
    body        TEXT NOT NULL,
    visible_at  INTEGER NOT NULL,
    claim       TEXT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    queued_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ready ON events (queue, visible_at, id);
CREATE TABLE IF NOT EXISTS dead_events (
    id        INTEGER PRIMARY KEY,
    event_id  TEXT,
    name      TEXT,
    queue     TEXT,
    body      TEXT,
    attempts  INTEGER,
    errors    TEXT,
    reason    TEXT,
    died_at   INTEGER
);
CREATE INDEX IF NOT EXISTS dead_events_event_id ON dead_events (event_id);
";

/// The first ready event of one queue: `?1` queue, `?2` now.
const CLAIM_SELECT: &str = "SELECT id, event_id, body, deliveries FROM events \
     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT 1";
/// The first `?3` ready events of one queue: `?1` queue, `?2` now.
const CLAIM_BATCH: &str = "SELECT id, event_id, body, deliveries, visible_at FROM events \
     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, id LIMIT ?3";
/// `?1` row id, `?2` new visible_at, `?3` claim token.
const CLAIM_UPDATE: &str =
    "UPDATE events SET visible_at = ?2, claim = ?3, deliveries = deliveries + 1 WHERE id = ?1";
/// `?1` row id, `?2` claim token, `?3` new visible_at.
const EXTEND: &str = "UPDATE events SET visible_at = ?3 WHERE id = ?1 AND claim = ?2";
/// `?1` row id, `?2` claim token.
const ACK: &str = "DELETE FROM events WHERE id = ?1 AND claim = ?2";
/// `?1` row id, `?2` claim token, `?3` body, `?4` visible_at.
const RETRY: &str = "UPDATE events SET body = ?3, visible_at = ?4, claim = NULL, deliveries = 0 \
     WHERE id = ?1 AND claim = ?2";
/// Gives back an event claimed ahead as it was: `?1` row id, `?2` claim
/// token, `?3` its visible_at before the claim.
const UNCLAIM: &str = "UPDATE events SET visible_at = ?3, claim = NULL, \
     deliveries = deliveries - 1 WHERE id = ?1 AND claim = ?2";
/// `?1` row id, `?2` claim token, `?3` now.
const RELEASE: &str =
    "UPDATE events SET visible_at = ?3, claim = NULL WHERE id = ?1 AND claim = ?2";
/// `?1` event id, `?2` queue, `?3` name, `?4` body, `?5` visible_at, `?6` queued_at.
const INSERT: &str = "INSERT INTO events (event_id, queue, name, body, visible_at, queued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (event_id) DO NOTHING";
/// `?1` queue, `?2` now.
const DEPTH: &str = "SELECT COALESCE(SUM(visible_at <= ?2), 0), \
     COALESCE(SUM(visible_at > ?2 AND claim IS NULL), 0), \
     MIN(CASE WHEN visible_at <= ?2 THEN queued_at END) FROM events WHERE queue = ?1";
const DEAD_WHERE: &str = "(?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR name = ?2) \
     AND (?3 IS NULL OR died_at < ?3)";

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
    ("claim", CLAIM_SELECT),
    ("claim_batch", CLAIM_BATCH),
    ("unclaim", UNCLAIM),
    ("claim_update", CLAIM_UPDATE),
    ("extend", EXTEND),
    ("ack", ACK),
    ("retry", RETRY),
    ("release", RELEASE),
    ("insert", INSERT),
    ("depth", DEPTH),
];

/// The parsed options of a `sqlite://` URL.
#[derive(Clone, Debug)]
struct Config {
    path: PathBuf,
    lease: Duration,
    full_sync: bool,
    busy_timeout: Duration,
    poll: Duration,
    batch: u32,
}

fn parse_url(url: &str) -> Result<Config, Error> {
    let bad = |message: String| Error::BadUrl {
        url: redact_url(url),
        message,
    };
    let rest = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| bad("expected `sqlite://path.db`".into()))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(bad(
            "no file path: use `sqlite://relative/path.db` or `sqlite:///absolute/path.db`".into(),
        ));
    }
    if path.contains('#') {
        return Err(bad("a `#` fragment is not allowed in a sqlite URL".into()));
    }
    let mut cfg = Config {
        path: PathBuf::from(path),
        lease: DEFAULT_LEASE,
        full_sync: false,
        busy_timeout: DEFAULT_BUSY_TIMEOUT,
        poll: DEFAULT_POLL,
        batch: DEFAULT_BATCH,
    };
    let duration = |key: &str, value: &str| {
        humantime::parse_duration(value).map_err(|e| {
            bad(format!(
                "option `{key}`: bad duration `{value}`: {e} (e.g. `30s`)"
            ))
        })
    };
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "lease" => {
                cfg.lease = duration(&key, &value)?;
                if cfg.lease < Duration::from_millis(3) {
                    return Err(bad(format!(
                        "option `lease`: `{value}` is too short (at least 3ms; the default is 30s)"
                    )));
                }
            }
            "busy_timeout" => cfg.busy_timeout = duration(&key, &value)?,
            "poll" => {
                cfg.poll = duration(&key, &value)?;
                if cfg.poll.is_zero() {
                    return Err(bad(
                        "option `poll`: must be longer than 0 (the default is 100ms)".into(),
                    ));
                }
            }
            "batch" => {
                cfg.batch = value
                    .parse::<u32>()
                    .ok()
                    .filter(|b| (1..=1000).contains(b))
                    .ok_or_else(|| {
                        bad(format!(
                            "option `batch`: `{value}` is not a number from 1 to 1000 (the default is {DEFAULT_BATCH})"
                        ))
                    })?;
            }
            "synchronous" => {
                cfg.full_sync = match value.to_ascii_lowercase().as_str() {
                    "normal" => false,
                    "full" => true,
                    _ => {
                        return Err(bad(format!(
                            "option `synchronous`: `{value}` is not `normal` or `full`"
                        )));
                    }
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown option `{other}`: expected `lease`, `synchronous`, `busy_timeout`, `poll` or `batch`"
                )));
            }
        }
    }
    Ok(cfg)
}

/// What a [`Delivery`] from this broker carries: the row and the claim token.
#[derive(Debug, Clone)]
struct Tag {
    row: i64,
    claim: String,
    event_id: String,
}

/// The connection and the deliveries this broker holds (row id, claim token)
/// → event id. Both live behind one mutex so the heartbeat never extends a
/// delivery that is being acked.
struct State {
    conn: Connection,
    held: HashMap<(i64, String), String>,
    /// Whether the next claim looks with a plain read first: after a claim
    /// that found nothing (idle polling stays off the write lock), not after
    /// one that found an event (a backlog is claimed straight away).
    peek: bool,
    /// Events claimed ahead and not handed out yet, in claim order (module
    /// docs, *Claiming ahead*); each is also in `held`.
    ahead: VecDeque<Ahead>,
}

/// An event claimed ahead.
struct Ahead {
    queue: String,
    tag: Tag,
    body: String,
    redelivered: bool,
    /// Its `visible_at` before the claim, restored if it goes back.
    visible_at: i64,
    since: Instant,
}

impl Ahead {
    fn into_delivery(self) -> Delivery {
        Delivery {
            queue: self.queue,
            body: self.body.into_bytes(),
            redelivered: self.redelivered,
            tag: Box::new(self.tag),
        }
    }
}

thread_local! {
    /// Set by [`refuse_to_wait`] when SQLite would have waited for a lock.
    static WOULD_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// The busy handler while an operation runs on the caller's thread: never
/// wait, note that SQLite wanted to.
fn refuse_to_wait(_attempts: i32) -> bool {
    WOULD_WAIT.with(|w| w.set(true));
    false
}

struct Inner {
    url: String,
    cfg: Config,
    /// An async mutex: a task waiting for the connection yields its thread,
    /// and the guard can move to the blocking pool with the operation.
    state: Arc<tokio::sync::Mutex<State>>,
    /// Publishes waiting for the connection (see [`SqliteBroker::publish`]).
    publishes: std::sync::Mutex<Vec<Pending<NewRow>>>,
    /// Acks waiting for the connection (see [`Broker::ack`]).
    acks: std::sync::Mutex<Vec<Pending<Tag>>>,
}

/// A row [`Broker::publish`] stores.
struct NewRow {
    event_id: String,
    queue: String,
    name: String,
    body: String,
    visible_at: i64,
    queued_at: i64,
}

/// A write waiting to be committed with others, and where its result goes.
struct Pending<T> {
    item: T,
    done: tokio::sync::oneshot::Sender<Result<(), Error>>,
}

impl Inner {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::broker(
            &self.url,
            format!("{what} (`{}`): {e}", self.cfg.path.display()),
        )
    }

    /// Runs `f` allowed to wait up to `busy_timeout` for another
    /// connection's lock (on a thread that may block).
    fn waiting<T>(
        &self,
        state: &mut State,
        f: impl FnOnce(&mut State) -> Result<T, Error>,
    ) -> Result<T, Error> {
        state
            .conn
            .busy_timeout(self.cfg.busy_timeout)
            .map_err(|e| self.err("busy timeout", e))?;
        let result = f(state);
        let restored = state
            .conn
            .busy_handler(Some(refuse_to_wait))
            .map_err(|e| self.err("busy handler", e));
        let value = result?;
        restored?;
        Ok(value)
    }

    fn lease_ms(&self) -> i64 {
        dur_ms(self.cfg.lease)
    }

    /// Pushes back the lease of every delivery this broker holds.
    fn extend_leases(&self, state: &mut State) -> Result<(), Error> {
        if state.held.is_empty() {
            return Ok(());
        }
        let until = now_i64().saturating_add(self.lease_ms());
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err("heartbeat: begin", e))?;
        let mut lost = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(EXTEND)
                .map_err(|e| self.err("heartbeat", e))?;
            for (row, claim) in state.held.keys() {
                let n = stmt
                    .execute(params![row, claim, until])
                    .map_err(|e| self.err("heartbeat", e))?;
                if n == 0 {
                    lost.push((*row, claim.clone()));
                }
            }
        }
        tx.commit().map_err(|e| self.err("heartbeat: commit", e))?;
        for key in lost {
            if let Some(event_id) = state.held.remove(&key) {
                tracing::warn!(
                    broker = %self.url,
                    event_id = %event_id,
                    "event {event_id}: its lease expired before the heartbeat renewed it \
                     (poller stalled longer than the lease?); another poller may have taken it, \
                     so it may run twice"
                );
            }
        }
        Ok(())
    }
}

/// The embedded broker: queues, scheduled events and dead letters in one
/// SQLite file, shared by any number of processes. See the [module
/// docs](self) for the URL options, durability and the lease.
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
        // Events claimed ahead go back now, not when their lease lapses (a
        // write: it may wait up to `busy_timeout` for another process).
        let inner = &self.inner;
        if let Ok(mut state) = inner.state.try_lock()
            && let Err(e) = inner.waiting(&mut state, |state| unclaim_ahead(inner, state, |_| true))
        {
            tracing::warn!(broker = %inner.url, "events claimed ahead not given back (they come back when their lease lapses): {e}");
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
        let cfg = parse_url(url)?;
        let redacted = redact_url(url);
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::broker(
                &redacted,
                format!("must be opened inside a Tokio runtime: {e}"),
            )
        })?;
        let conn = {
            let (cfg, url) = (cfg.clone(), redacted.clone());
            tokio::task::spawn_blocking(move || open_connection(&url, &cfg))
                .await
                .map_err(|e| {
                    Error::broker(&redacted, format!("opening the database failed: {e}"))
                })??
        };
        let inner = Arc::new(Inner {
            url: redacted,
            cfg,
            state: Arc::new(tokio::sync::Mutex::new(State {
                conn,
                held: HashMap::new(),
                peek: true,
                ahead: VecDeque::new(),
            })),
            publishes: std::sync::Mutex::new(Vec::new()),
            acks: std::sync::Mutex::new(Vec::new()),
        });
        let every = (inner.cfg.lease / 3).max(Duration::from_millis(1));
        let heartbeat = runtime
            .spawn(heartbeat(Arc::downgrade(&inner), every))
            .abort_handle();
        Ok(SqliteBroker { inner, heartbeat })
    }

    /// Runs `f` on the connection: here, unless SQLite would have to wait
    /// for another connection's lock; then again on the blocking pool, where
    /// it may wait (see the module docs, *Cost*). `f` must change nothing
    /// before the point where SQLite refuses: every operation starts with
    /// the statement or `BEGIN IMMEDIATE` that takes the lock.
    async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&Inner, &mut State) -> Result<T, Error> + Send + 'static,
    {
        let mut guard = Arc::clone(&self.inner.state).lock_owned().await;
        WOULD_WAIT.with(|w| w.set(false));
        let first = f(&self.inner, &mut guard);
        if first.is_ok() || !WOULD_WAIT.with(|w| w.get()) {
            return first;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.waiting(&mut guard, |state| f(&inner, state)))
            .await
            .map_err(|e| Error::broker(&self.inner.url, format!("database task failed: {e}")))?
    }

    /// Group commit: `item` joins the writes `pending` holds, and whoever
    /// gets the connection first commits all of them with `commit` in one
    /// transaction (one write lock, one WAL commit). Each caller returns only
    /// once the transaction holding its write committed. The writes are
    /// committed even if the caller stops waiting.
    async fn group_commit<T: Send + 'static>(
        &self,
        pending: fn(&Inner) -> &std::sync::Mutex<Vec<Pending<T>>>,
        item: T,
        commit: fn(&Inner, &mut State, &[T]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let take_all = || std::mem::take(&mut *lock_vec(pending(&self.inner)));
        let (done, mut result) = tokio::sync::oneshot::channel();
        lock_vec(pending(&self.inner)).push(Pending { item, done });
        let mut guard = tokio::select! {
            biased;
            r = &mut result => return self.committed(r),
            guard = Arc::clone(&self.inner.state).lock_owned() => guard,
        };
        let (items, senders): (Vec<T>, Vec<_>) =
            take_all().into_iter().map(|p| (p.item, p.done)).unzip();
        if items.is_empty() {
            // Committed by whoever had the connection before us.
            drop(guard);
            return self.committed(result.await);
        }
        WOULD_WAIT.with(|w| w.set(false));
        let first = commit(&self.inner, &mut guard, &items);
        if first.is_err() && WOULD_WAIT.with(|w| w.get()) {
            // Another connection holds the write lock: wait for it on the
            // blocking pool, which also hands out the results.
            let inner = Arc::clone(&self.inner);
            drop(tokio::task::spawn_blocking(move || {
                let r = inner.waiting(&mut guard, |state| commit(&inner, state, &items));
                drop(guard);
                hand_out(&inner.url, senders, r);
            }));
        } else {
            drop(guard);
            hand_out(&self.inner.url, senders, first);
        }
        self.committed(result.await)
    }

    fn committed(
        &self,
        r: Result<Result<(), Error>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<(), Error> {
        r.unwrap_or_else(|_| {
            Err(Error::broker(
                &self.inner.url,
                "the task committing this write stopped before it finished",
            ))
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

    /// Runs one claim-checked statement for `delivery` and forgets it.
    async fn settle(
        &self,
        delivery: &Delivery,
        what: &'static str,
        sql: &'static str,
        extra: Vec<rusqlite::types::Value>,
    ) -> Result<(), Error> {
        let tag = self.tag(delivery)?;
        let (row, claim, event_id) = (tag.row, tag.claim.clone(), tag.event_id.clone());
        self.run(move |inner, state| {
            let mut args: Vec<rusqlite::types::Value> = vec![row.into(), claim.clone().into()];
            args.extend(extra.iter().cloned());
            let n = state
                .conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(args)));
            // Forgotten even when the statement failed: the heartbeat must
            // not keep an event whose poller may give up on it (module docs).
            state.held.remove(&(row, claim.clone()));
            let n = n.map_err(|e| inner.err(what, e))?;
            if n == 0 {
                warn_lapsed(&inner.url, &event_id, what);
            }
            Ok(())
        })
        .await
    }
}

/// A Vec of pending writes: pushing to it or taking it cannot leave it
/// half-changed, so a poisoned lock is still usable.
fn lock_vec<T>(m: &std::sync::Mutex<Vec<T>>) -> std::sync::MutexGuard<'_, Vec<T>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends a group commit's outcome to each of its writers.
fn hand_out(
    url: &str,
    senders: Vec<tokio::sync::oneshot::Sender<Result<(), Error>>>,
    r: Result<(), Error>,
) {
    match r {
        Ok(()) => {
            for s in senders {
                let _ = s.send(Ok(()));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for s in senders {
                let _ = s.send(Err(Error::broker(url, message.clone())));
            }
        }
    }
}

/// Stores `rows` in one transaction (one autocommit insert for a single row).
fn insert_rows(inner: &Inner, state: &mut State, rows: &[NewRow]) -> Result<(), Error> {
    let insert = |conn: &Connection, row: &NewRow| -> Result<(), Error> {
        let n = conn
            .prepare_cached(INSERT)
            .and_then(|mut s| {
                s.execute(params![
                    row.event_id,
                    row.queue,
                    row.name,
                    row.body,
                    row.visible_at,
                    row.queued_at
                ])
            })
            .map_err(|e| inner.err("publish", e))?;
        if n == 0 {
            tracing::debug!(broker = %inner.url, event_id = %row.event_id, "event {} is already queued: not stored twice", row.event_id);
        }
        Ok(())
    };
    each_in_one_tx(inner, state, "publish", rows, insert)
}

/// Runs `f` for every item in one write transaction, or in autocommit for
/// a single item (`what` names the operation in errors).
fn each_in_one_tx<T>(
    inner: &Inner,
    state: &mut State,
    what: &str,
    items: &[T],
    f: impl Fn(&Connection, &T) -> Result<(), Error>,
) -> Result<(), Error> {
    if let [item] = items {
        return f(&state.conn, item);
    }
    let tx = state
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| inner.err(&format!("{what}: begin"), e))?;
    for item in items {
        f(&tx, item)?;
    }
    tx.commit()
        .map_err(|e| inner.err(&format!("{what}: commit"), e))
}

/// Deletes the rows of acked deliveries in one transaction (an autocommit
/// delete for a single one). The deliveries are forgotten by the heartbeat
/// first, even if the delete then fails (module docs, *Ownership*).
fn ack_rows(inner: &Inner, state: &mut State, acks: &[Tag]) -> Result<(), Error> {
    for a in acks {
        state.held.remove(&(a.row, a.claim.clone()));
    }
    let delete = |conn: &Connection, a: &Tag| -> Result<(), Error> {
        let n = conn
            .prepare_cached(ACK)
            .and_then(|mut s| s.execute(params![a.row, a.claim]))
            .map_err(|e| inner.err("ack", e))?;
        if n == 0 {
            warn_lapsed(&inner.url, &a.event_id, "ack");
        }
        Ok(())
    };
    each_in_one_tx(inner, state, "ack", acks, delete)
}

fn warn_lapsed(url: &str, event_id: &str, what: &str) {
    tracing::warn!(
        broker = %url,
        event_id = %event_id,
        "event {event_id}: its lease expired before {what} (the poller stalled longer than the lease) \
         and another poller took it: left alone, it may run twice"
    );
}

/// Extends the leases of held deliveries every `every`, and gives back the
/// events claimed ahead that waited more than [`AHEAD_MAX`] (looked for every
/// half of it).
async fn heartbeat(inner: Weak<Inner>, every: Duration) {
    let step = every.min(AHEAD_MAX / 2);
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut extended = Instant::now();
    let stale = |a: &Ahead| a.since.elapsed() > AHEAD_MAX;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let extend = extended.elapsed() + step / 2 >= every;
        if !extend && !inner.state.lock().await.ahead.iter().any(stale) {
            continue;
        }
        if extend {
            extended = Instant::now();
        }
        let url = inner.url.clone();
        let work = move || {
            let mut state = inner.state.blocking_lock();
            inner.waiting(&mut state, |state| {
                let back = unclaim_ahead(&inner, state, stale)?;
                if back > 0 {
                    tracing::debug!(broker = %inner.url, "gave back {back} event(s) claimed ahead and not started within {AHEAD_MAX:?}");
                }
                if extend {
                    inner.extend_leases(state)?;
                }
                Ok(())
            })
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(broker = %url, "lease heartbeat failed: {e}"),
            Err(e) => tracing::warn!(broker = %url, "lease heartbeat task failed: {e}"),
        }
    }
}

fn open_connection(url: &str, cfg: &Config) -> Result<Connection, Error> {
    let path = &cfg.path;
    let fail = |e: &dyn std::fmt::Display| {
        Error::broker(
            url,
            format!("cannot open database `{}`: {e}", path.display()),
        )
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::io(
                format!(
                    "broker `{url}`: cannot create directory `{}` for database `{}`",
                    parent.display(),
                    path.display()
                ),
                e,
            )
        })?;
    }
    let mut conn = Connection::open(path).map_err(|e| fail(&e))?;
    conn.busy_timeout(cfg.busy_timeout).map_err(|e| fail(&e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| fail(&e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(broker = %url, "journal_mode is `{mode}`, not WAL: sharing this file between processes will be slow");
    }
    let sync = if cfg.full_sync { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(|e| fail(&e))?;
    init_schema(&mut conn, url, path)?;
    // From here on an operation waits for a lock only on the blocking pool
    // (`Inner::waiting`); elsewhere SQLite returns at once (`SqliteBroker::run`).
    conn.busy_handler(Some(refuse_to_wait))
        .map_err(|e| fail(&e))?;
    Ok(conn)
}

fn init_schema(conn: &mut Connection, url: &str, path: &Path) -> Result<(), Error> {
    let fail = |e: rusqlite::Error| {
        Error::broker(
            url,
            format!("cannot set up the schema of `{}`: {e}", path.display()),
        )
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    if version > SCHEMA_VERSION {
        return Err(Error::broker(
            url,
            format!(
                "database `{}` has schema version {version}, newer than this build supports \
                 ({SCHEMA_VERSION}): it was written by a newer action_event; upgrade this program",
                path.display()
            ),
        ));
    }
    if version < SCHEMA_VERSION {
        tx.execute_batch(SCHEMA).map_err(fail)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(fail)?;
    }
    tx.commit().map_err(fail)
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

/// One claim attempt over `queues`, in order.
fn claim_once(
    inner: &Inner,
    state: &mut State,
    queues: &[String],
) -> Result<Option<Delivery>, Error> {
    let now = now_i64();
    // An event claimed ahead, of the first queue asked for that has one, if
    // no queue listed before it has a ready event (then the claim below
    // takes that one first). Nothing changes before the reads succeed: `run`
    // may call this again.
    let ahead = queues.iter().enumerate().find_map(|(i, q)| {
        state
            .ahead
            .iter()
            .position(|a| &a.queue == q)
            .map(|pos| (i, pos))
    });
    if let Some((i, pos)) = ahead
        && !any_ready(inner, state, &queues[..i], now)?
    {
        return Ok(state.ahead.remove(pos).map(Ahead::into_delivery));
    }
    // With an event claimed ahead, only the queues before its own are
    // claimed from (one of them had a ready event just now).
    let scan = match ahead {
        Some((i, _)) => &queues[..i],
        None => queues,
    };
    // A plain read first when the last claim found nothing: an idle poll
    // never takes the write lock, so idle pollers in other processes do not
    // queue up behind each other or behind publishers. While a backlog is
    // being claimed, the read would only repeat what the claim looks at.
    if ahead.is_none() && state.peek && !any_ready(inner, state, queues, now)? {
        return Ok(None);
    }
    // Something is ready: claim it under the write lock, looking again in
    // priority order (another poller may have taken it meanwhile).
    let tx = state
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| inner.err("take: begin", e))?;
    let mut found: Option<(&String, Vec<ClaimedRow>)> = None;
    {
        let mut select = tx
            .prepare_cached(CLAIM_BATCH)
            .map_err(|e| inner.err("take", e))?;
        for queue in scan {
            let rows = select
                .query_map(params![queue, now, inner.cfg.batch], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| inner.err("take", e))?;
            if !rows.is_empty() {
                found = Some((queue, rows));
                break;
            }
        }
    }
    let Some((queue, rows)) = found else {
        // Nothing ready: nothing written, the rollback is free. The higher
        // queues are empty now: the event claimed ahead goes.
        drop(tx);
        if let Some((_, pos)) = ahead {
            return Ok(state.ahead.remove(pos).map(Ahead::into_delivery));
        }
        state.peek = true;
        return Ok(None);
    };
    let claim = format!("{:032x}", rand::random::<u128>());
    {
        let until = now.saturating_add(inner.lease_ms());
        let mut update = tx
            .prepare_cached(CLAIM_UPDATE)
            .map_err(|e| inner.err("take", e))?;
        for (row, ..) in &rows {
            update
                .execute(params![row, until, claim])
                .map_err(|e| inner.err("take", e))?;
        }
    }
    tx.commit().map_err(|e| inner.err("take: commit", e))?;
    state.peek = false;
    let since = Instant::now();
    let mut first = None;
    for (row, event_id, body, deliveries, visible_at) in rows {
        state.held.insert((row, claim.clone()), event_id.clone());
        let a = Ahead {
            queue: queue.clone(),
            tag: Tag {
                row,
                claim: claim.clone(),
                event_id,
            },
            body,
            redelivered: deliveries + 1 > 1,
            visible_at,
            since,
        };
        match first {
            None => first = Some(a),
            Some(_) => state.ahead.push_back(a),
        }
    }
    Ok(first.map(Ahead::into_delivery))
}

/// A row [`CLAIM_BATCH`] found: id, event id, body, deliveries, visible_at.
type ClaimedRow = (i64, String, String, i64, i64);

/// Whether any of `queues` has a ready event (a plain read).
fn any_ready(inner: &Inner, state: &State, queues: &[String], now: i64) -> Result<bool, Error> {
    if queues.is_empty() {
        return Ok(false);
    }
    let mut peek = state
        .conn
        .prepare_cached(CLAIM_SELECT)
        .map_err(|e| inner.err("take", e))?;
    for queue in queues {
        if peek
            .exists(params![queue, now])
            .map_err(|e| inner.err("take", e))?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Gives back the events claimed ahead that `go_back` picks, in one
/// transaction, as they were before the claim (module docs, *Claiming
/// ahead*). Returns how many went back.
fn unclaim_ahead(
    inner: &Inner,
    state: &mut State,
    go_back: impl Fn(&Ahead) -> bool,
) -> Result<usize, Error> {
    // Picked once: a time-based pick could change between the update and
    // the bookkeeping, and leave an event claimed that nobody holds.
    let pick: Vec<bool> = state.ahead.iter().map(&go_back).collect();
    let n = pick.iter().filter(|p| **p).count();
    if n == 0 {
        return Ok(0);
    }
    let tx = state
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| inner.err("give back: begin", e))?;
    {
        let mut stmt = tx
            .prepare_cached(UNCLAIM)
            .map_err(|e| inner.err("give back", e))?;
        for (a, _) in state.ahead.iter().zip(&pick).filter(|(_, p)| **p) {
            stmt.execute(params![a.tag.row, a.tag.claim, a.visible_at])
                .map_err(|e| inner.err("give back", e))?;
        }
    }
    tx.commit().map_err(|e| inner.err("give back: commit", e))?;
    let mut keep = VecDeque::with_capacity(state.ahead.len() - n);
    for (a, back) in std::mem::take(&mut state.ahead).into_iter().zip(pick) {
        if back {
            state.held.remove(&(a.tag.row, a.tag.claim));
        } else {
            keep.push_back(a);
        }
    }
    state.ahead = keep;
    Ok(n)
}

/// A dead row as stored.
struct DeadRow {
    rowid: i64,
    event: DeadEvent,
}

fn dead_rows(
    conn: &Connection,
    inner: &Inner,
    id: Option<&str>,
    filter: &DeadFilter,
) -> Result<Vec<DeadRow>, Error> {
    let sql_filter = format!(
        "SELECT id, event_id, name, queue, body, attempts, errors, reason, died_at \
         FROM dead_events WHERE {DEAD_WHERE} ORDER BY died_at, id"
    );
    const SQL_ID: &str = "SELECT id, event_id, name, queue, body, attempts, errors, reason, died_at \
         FROM dead_events WHERE event_id = ?1 ORDER BY died_at, id";
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<DeadRow> {
        let errors: Option<String> = r.get(6)?;
        let event_id: Option<String> = r.get(1)?;
        let errors = match errors.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => serde_json::from_str::<Vec<AttemptError>>(json).unwrap_or_else(|e| {
                tracing::warn!(
                    broker = %inner.url,
                    "dead event {}: its stored errors are not readable: {e}",
                    event_id.as_deref().unwrap_or("?")
                );
                Vec::new()
            }),
        };
        Ok(DeadRow {
            rowid: r.get(0)?,
            event: DeadEvent {
                id: event_id.unwrap_or_default(),
                name: r.get(2)?,
                queue: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                body: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                attempts: u32::try_from(r.get::<_, Option<i64>>(5)?.unwrap_or(0)).unwrap_or(0),
                errors,
                reason: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                died_at_ms: u64::try_from(r.get::<_, Option<i64>>(8)?.unwrap_or(0)).unwrap_or(0),
            },
        })
    };
    let rows = match id {
        Some(id) => {
            let mut stmt = conn
                .prepare_cached(SQL_ID)
                .map_err(|e| inner.err("dead events", e))?;
            let rows = stmt
                .query_map([id], read)
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| inner.err("dead events", e))?;
            if rows.is_empty() {
                return Err(Error::NoSuchDeadEvent(id.to_string()));
            }
            rows
        }
        None => {
            let mut stmt = conn
                .prepare_cached(&sql_filter)
                .map_err(|e| inner.err("dead events", e))?;
            stmt.query_map(
                params![
                    filter.queue,
                    filter.event,
                    filter.died_before_ms.map(ms_i64)
                ],
                read,
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| inner.err("dead events", e))?
        }
    };
    Ok(rows)
}

#[async_trait]
impl Broker for SqliteBroker {
    fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// Concurrent publishes are committed together (group commit): each
    /// returns once the transaction holding its row committed.
    async fn publish(&self, envelope: &Envelope) -> Result<(), Error> {
        let now = now_i64();
        let row = NewRow {
            event_id: envelope.id.to_string(),
            queue: envelope.queue.clone(),
            name: envelope.name.clone(),
            body: text(envelope.to_bytes()),
            visible_at: envelope.run_at_ms.map(ms_i64).unwrap_or(now),
            queued_at: match envelope.queued_at_ms {
                0 => now,
                ms => ms_i64(ms),
            },
        };
        self.group_commit(|inner| &inner.publishes, row, insert_rows)
            .await
    }

    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error> {
        let start = Instant::now();
        let mut sleep = FIRST_POLL.min(self.inner.cfg.poll);
        loop {
            let queues = queues.to_vec();
            if let Some(d) = self
                .run(move |inner, state| claim_once(inner, state, &queues))
                .await?
            {
                return Ok(Some(d));
            }
            let elapsed = start.elapsed();
            if elapsed >= wait {
                return Ok(None);
            }
            tokio::time::sleep(sleep.min(wait - elapsed)).await;
            sleep = (sleep * 2).min(self.inner.cfg.poll);
        }
    }

    async fn give_back(&self) -> Result<(), Error> {
        self.run(|inner, state| unclaim_ahead(inner, state, |_| true).map(|_| ()))
            .await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        // Acks that wait for the connection at the same time are committed
        // together, like publishes: at high concurrency one write
        // transaction settles many events.
        let tag = self.tag(delivery)?;
        self.group_commit(|inner| &inner.acks, tag.clone(), ack_rows)
            .await
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        next: &Envelope,
        delay: Duration,
    ) -> Result<(), Error> {
        let body = text(next.to_bytes());
        let visible_at = now_i64().saturating_add(dur_ms(delay));
        self.settle(
            delivery,
            "retry",
            RETRY,
            vec![body.into(), visible_at.into()],
        )
        .await
    }

    async fn dead(&self, delivery: &Delivery, dead: &DeadEvent) -> Result<(), Error> {
        let tag = self.tag(delivery)?;
        let (row, claim, event_id) = (tag.row, tag.claim.clone(), tag.event_id.clone());
        let dead = dead.clone();
        let errors = serde_json::to_string(&dead.errors)
            .map_err(|e| Error::broker(&self.inner.url, format!("dead: errors: {e}")))?;
        self.run(move |inner, state| {
            // Forgotten whatever happens next: see `settle`.
            state.held.remove(&(row, claim.clone()));
            let tx = state
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| inner.err("dead: begin", e))?;
            let n = tx
                .prepare_cached(ACK)
                .and_then(|mut s| s.execute(params![row, claim]))
                .map_err(|e| inner.err("dead", e))?;
            if n == 0 {
                drop(tx);
                warn_lapsed(&inner.url, &event_id, "dead-lettering");
                return Ok(());
            }
            let id = if dead.id.is_empty() {
                &event_id
            } else {
                &dead.id
            };
            tx.execute(
                "INSERT INTO dead_events (event_id, name, queue, body, attempts, errors, reason, died_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id,
                    dead.name,
                    dead.queue,
                    dead.body,
                    i64::from(dead.attempts),
                    errors,
                    dead.reason,
                    ms_i64(dead.died_at_ms)
                ],
            )
            .map_err(|e| inner.err("dead", e))?;
            tx.commit().map_err(|e| inner.err("dead: commit", e))?;
            Ok(())
        })
        .await
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), Error> {
        self.settle(delivery, "release", RELEASE, vec![now_i64().into()])
            .await
    }

    async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error> {
        let filter = filter.clone();
        self.run(move |inner, state| {
            Ok(dead_rows(&state.conn, inner, None, &filter)?
                .into_iter()
                .map(|r| r.event)
                .collect())
        })
        .await
    }

    async fn dead_retry(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        let id = id.map(str::to_string);
        let filter = filter.clone();
        self.run(move |inner, state| {
            let tx = state
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| inner.err("dead retry: begin", e))?;
            let rows = dead_rows(&tx, inner, id.as_deref(), &filter)?;
            let now = now_ms();
            let mut count = 0;
            for row in rows {
                let dead = &row.event;
                let env = match Envelope::from_slice(dead.body.as_bytes()) {
                    Ok(env) => env,
                    Err(e) => {
                        tracing::warn!(
                            broker = %inner.url,
                            event_id = %dead.id,
                            "dead event {}: not retried, its body is not a valid envelope ({e}); \
                             it stays in the dead letters",
                            dead.id
                        );
                        continue;
                    }
                };
                let fresh = Envelope {
                    attempt: 1,
                    errors: Vec::new(),
                    run_at_ms: None,
                    queued_at_ms: now,
                    ..env
                };
                let n = tx
                    .prepare_cached(INSERT)
                    .and_then(|mut s| {
                        s.execute(params![
                            fresh.id.to_string(),
                            fresh.queue,
                            fresh.name,
                            text(fresh.to_bytes()),
                            ms_i64(now),
                            ms_i64(now)
                        ])
                    })
                    .map_err(|e| inner.err("dead retry", e))?;
                if n == 0 {
                    tracing::warn!(
                        broker = %inner.url,
                        event_id = %fresh.id,
                        "dead event {}: not retried, an event with this id is already queued; \
                         it stays in the dead letters",
                        fresh.id
                    );
                    continue;
                }
                tx.execute("DELETE FROM dead_events WHERE id = ?1", [row.rowid])
                    .map_err(|e| inner.err("dead retry", e))?;
                count += 1;
            }
            tx.commit()
                .map_err(|e| inner.err("dead retry: commit", e))?;
            Ok(count)
        })
        .await
    }

    async fn dead_purge(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        let id = id.map(str::to_string);
        let filter = filter.clone();
        self.run(move |inner, state| {
            let n = match &id {
                Some(id) => {
                    let n = state
                        .conn
                        .execute("DELETE FROM dead_events WHERE event_id = ?1", [id])
                        .map_err(|e| inner.err("dead purge", e))?;
                    if n == 0 {
                        return Err(Error::NoSuchDeadEvent(id.clone()));
                    }
                    n
                }
                None => state
                    .conn
                    .execute(
                        &format!("DELETE FROM dead_events WHERE {DEAD_WHERE}"),
                        params![
                            filter.queue,
                            filter.event,
                            filter.died_before_ms.map(ms_i64)
                        ],
                    )
                    .map_err(|e| inner.err("dead purge", e))?,
            };
            Ok(n as u64)
        })
        .await
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, Error> {
        let queue = queue.to_string();
        self.run(move |inner, state| {
            let now = now_i64();
            let (waiting, scheduled, oldest): (i64, i64, Option<i64>) = state
                .conn
                .prepare_cached(DEPTH)
                .and_then(|mut s| {
                    s.query_row(params![queue, now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                })
                .map_err(|e| inner.err("depth", e))?;
            Ok(QueueDepth {
                waiting: u64::try_from(waiting).unwrap_or(0),
                scheduled: Some(u64::try_from(scheduled).unwrap_or(0)),
                oldest_age: oldest.map(|q| {
                    Duration::from_millis(u64::try_from(now.saturating_sub(q)).unwrap_or(0))
                }),
            })
        })
        .await
    }

    async fn queues_with_events(&self) -> Result<Option<Vec<String>>, Error> {
        self.run(|inner, state| {
            let mut stmt = state
                .conn
                .prepare_cached("SELECT DISTINCT queue FROM events ORDER BY queue")
                .map_err(|e| inner.err("list queues", e))?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| inner.err("list queues", e))?;
            Ok(Some(rows))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options() {
        let c =
            parse_url("sqlite:///tmp/x/a.db?lease=2m&synchronous=FULL&busy_timeout=1s&poll=10ms")
                .unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x/a.db"));
        assert_eq!(c.lease, Duration::from_secs(120));
        assert!(c.full_sync);
        assert_eq!(c.busy_timeout, Duration::from_secs(1));
        assert_eq!(c.poll, Duration::from_millis(10));
        let c = parse_url("sqlite://rel/a.db").unwrap();
        assert_eq!(c.path, PathBuf::from("rel/a.db"));
        assert_eq!(c.lease, DEFAULT_LEASE);
        assert!(!c.full_sync);
        assert!(parse_url("sqlite://").is_err());
        assert!(parse_url("sqlite://a.db?poll=0s").is_err());
    }
}
