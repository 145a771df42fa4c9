//! The file: opening it, its pragmas and its schema.
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
//! [`Broker::publish`](crate::broker::Broker::publish) and every state change
//! return after their transaction committed. With the default
//! `synchronous=normal`, a committed transaction survives any crash of any
//! process (including `kill -9` of the poller in the middle of a write); only
//! an operating-system crash or a power loss may lose the last transactions
//! before the WAL is synced. `synchronous=full` syncs the WAL on every commit
//! and also survives an OS crash or power loss, at the cost of one `fsync`
//! per write.
//!
//! # Schema versions
//!
//! `PRAGMA user_version` says which schema the file has; opening a file
//! brings it up to [`SCHEMA_VERSION`] in one transaction, and a file newer
//! than this build is refused (upgrade the program). Version 1: `events`
//! and `dead_events`. Version 2 adds who holds a claim ([`super::owner`]):
//! the table `owners` and the column `events.owner`, NULL in the rows of
//! version 1, which keep working as before (their lease decides). Adding a
//! column with no default rewrites nothing: the migration is instant
//! whatever the file's size.
//!
//! # Where the file is
//!
//! A relative path is relative to the working directory of each process:
//! an app and a poller started in different directories use different
//! files. The absolute path is logged (INFO) the first time a process opens
//! the file. A directory that does not exist is an error naming it: it is
//! not created (a mistyped path would silently start an empty queue).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, TransactionBehavior};

use super::conn::refuse_to_wait;
use super::options::Options;
use super::{now_i64, owner};
use crate::Error;

/// The schema version this build writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

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

/// Version 2: who holds a claim (see [`super::owner`]). Ids are never
/// reused (`AUTOINCREMENT`): an id names one broker of one process forever.
/// `events.owner` has no index on purpose: maintaining one on every claim
/// and ack slowed drains by 7-13 % (benchmark, 30,000 events), while the
/// only query by owner (`owner::RECLAIM`) runs once per dead
/// poller, where one scan of the table is cheap.
const OWNERS: &str = "
ALTER TABLE events ADD COLUMN owner INTEGER;
CREATE TABLE IF NOT EXISTS owners (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    pid     INTEGER NOT NULL,
    started INTEGER NOT NULL,
    boot    TEXT NOT NULL,
    pid_ns  TEXT NOT NULL,
    since   INTEGER NOT NULL
);
";

pub(super) fn open_connection(url: &str, cfg: &Options) -> Result<Connection, Error> {
    let path = &cfg.path;
    let fail = |e: &dyn std::fmt::Display| {
        Error::broker(
            url,
            format!("cannot open database `{}`: {e}", path.display()),
        )
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        let dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        return Err(Error::BadUrl {
            url: url.to_string(),
            message: format!(
                "the directory `{}` of database `{}` does not exist: create it \
                 (`mkdir -p {}`) or fix the path",
                dir.display(),
                path.display(),
                dir.display()
            ),
        });
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
    // Checkpoints follow the write that needs one instead of running inside
    // it (see `conn`'s module docs, *Checkpoints*).
    conn.wal_hook(Some(super::conn::note_wal_pages));
    log_path_once(url, path);
    // The events of pollers that died come back now, not after their lease.
    if let Err(e) = owner::reclaim_gone(&mut conn, now_i64(), url, path) {
        tracing::warn!(broker = %url, "{e}");
    }
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
    if version < 1 {
        tx.execute_batch(SCHEMA).map_err(fail)?;
    }
    if version < 2 {
        tx.execute_batch(OWNERS).map_err(fail)?;
    }
    // Tables added without a version bump, created if missing whatever the
    // version (older builds ignore them): paused queues, periodic ticks,
    // poller reports.
    tx.execute_batch(super::pause::TABLE).map_err(fail)?;
    tx.execute_batch(super::tick::SCHEMA).map_err(fail)?;
    tx.execute_batch(super::presence::TABLE).map_err(fail)?;
    if version < SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(fail)?;
    }
    tx.commit().map_err(fail)
}

/// Logs the absolute path of the file, the first time this process opens it.
fn log_path_once(url: &str, path: &Path) {
    static LOGGED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let abs = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if logged.get_or_insert_with(HashSet::new).insert(abs.clone()) {
        tracing::info!(broker = %url, "SQLite database: {}", abs.display());
    }
}
