//! The connection and how operations run on it.
//!
//! # Cost
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
//! # Checkpoints
//!
//! SQLite's own WAL checkpoint (every 1000 pages) would run inside the
//! commit that crosses the mark, so the caller of that write, often a
//! `queue_many` of thousands of events, would wait for the copy of the
//! whole log into the database file (measured: 26 ms of an 83 ms batch of
//! 30,000). The broker's connection has a WAL hook instead
//! (`note_wal_pages`) that only notes the mark; the operation returns,
//! and a task checkpoints (`PRAGMA wal_checkpoint(PASSIVE)`, what the
//! automatic one does) right after, on the blocking pool, holding the
//! connection like any operation. Same mark, same mode, same durability
//! (a checkpoint never decides what is committed); only who waits for it
//! changes.
//!
//! Publishes that wait for the connection at the same time are committed
//! together, in one transaction (group commit); each still returns only once
//! its row is committed. Acks are grouped the same way, so at high
//! concurrency one write transaction settles many events.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};

use super::SqliteBroker;
use super::ahead::Ahead;
use super::claim::Tag;
use super::options::Options;
use super::publish::NewRow;
use crate::Error;

/// The connection and the deliveries this broker holds (row id, claim token)
/// → event id. Both live behind one mutex so the heartbeat never extends a
/// delivery that is being acked.
pub(super) struct State {
    pub(super) conn: Connection,
    /// Deliveries handed out or claimed ahead, kept alive by the heartbeat
    /// ([`super::lease`]) until settled ([`super::settle`]).
    pub(super) held: HashMap<(i64, String), String>,
    /// Whether the next claim looks with a plain read first: after a claim
    /// that found nothing (idle polling stays off the write lock), not after
    /// one that found an event (a backlog is claimed straight away).
    pub(super) peek: bool,
    /// Events claimed ahead and not handed out yet, in claim order
    /// ([`super::ahead`]); each is also in `held`.
    pub(super) ahead: VecDeque<Ahead>,
    /// This broker's row in `owners`, registered by its first claim
    /// ([`super::owner`]); `None` before, or where the process cannot be
    /// described (its claims then carry no owner).
    pub(super) owner: Option<i64>,
    /// Whether this broker takes events (a poller): then its heartbeat
    /// looks for owners that are gone.
    pub(super) taking: bool,
}

impl State {
    pub(super) fn new(conn: Connection) -> State {
        State {
            conn,
            held: HashMap::new(),
            peek: true,
            ahead: VecDeque::new(),
            owner: None,
            taking: false,
        }
    }
}

thread_local! {
    /// Set by [`refuse_to_wait`] when SQLite would have waited for a lock.
    static WOULD_WAIT: Cell<bool> = const { Cell::new(false) };
    /// Set by [`note_wal_pages`] when a commit on this thread left the WAL
    /// at or past [`CHECKPOINT_PAGES`].
    static CHECKPOINT_DUE: Cell<bool> = const { Cell::new(false) };
}

/// The WAL size (pages) from which a checkpoint follows a commit: SQLite's
/// default `wal_autocheckpoint`.
const CHECKPOINT_PAGES: std::ffi::c_int = 1000;

/// The broker connection's WAL hook (it replaces SQLite's automatic
/// checkpoint; see the module docs, *Checkpoints*): notes that a
/// checkpoint is due, for the code that ran the commit on this thread.
pub(super) fn note_wal_pages(
    _: &rusqlite::hooks::Wal,
    pages: std::ffi::c_int,
) -> rusqlite::Result<()> {
    if pages >= CHECKPOINT_PAGES {
        CHECKPOINT_DUE.with(|d| d.set(true));
    }
    Ok(())
}

/// The busy handler while an operation runs on the caller's thread: never
/// wait, note that SQLite wanted to.
pub(super) fn refuse_to_wait(_attempts: i32) -> bool {
    WOULD_WAIT.with(|w| w.set(true));
    false
}

/// What the broker shares with its heartbeat task: the URL, the options, the
/// connection and the writes waiting for it.
pub(super) struct Inner {
    pub(super) url: String,
    pub(super) cfg: Options,
    /// An async mutex: a task waiting for the connection yields its thread,
    /// and the guard can move to the blocking pool with the operation.
    pub(super) state: Arc<tokio::sync::Mutex<State>>,
    /// Publishes waiting for the connection (see [`super::publish`]).
    pub(super) publishes: std::sync::Mutex<Vec<Pending<Vec<NewRow>>>>,
    /// Acks waiting for the connection (see [`super::settle`]).
    pub(super) acks: std::sync::Mutex<Vec<Pending<Tag>>>,
    /// Whether the last claim found events: a poller is working through a
    /// backlog, so another claim is near and acks wait for it
    /// ([`super::claim`], *Acks ride on claims*).
    pub(super) claiming: std::sync::atomic::AtomicBool,
    /// Whether a checkpoint task is on its way (see the module docs,
    /// *Checkpoints*).
    pub(super) checkpointing: Arc<std::sync::atomic::AtomicBool>,
}

/// A write waiting to be committed with others, and where its result goes.
pub(super) struct Pending<T> {
    item: T,
    done: tokio::sync::oneshot::Sender<Result<(), Error>>,
}

impl Inner {
    pub(super) fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::broker(
            &self.url,
            format!("{what} (`{}`): {e}", self.cfg.path.display()),
        )
    }

    /// Runs `f` allowed to wait up to `busy_timeout` for another
    /// connection's lock (on a thread that may block).
    pub(super) fn waiting<T>(
        &self,
        state: &mut State,
        f: impl FnOnce(&mut State) -> Result<T, Error>,
    ) -> Result<T, Error> {
        state
            .conn
            .busy_timeout(self.cfg.busy_timeout)
            .map_err(|e| self.err("busy timeout", e))?;
        let result = f(state);
        self.checkpoint_if_due();
        let restored = state
            .conn
            .busy_handler(Some(refuse_to_wait))
            .map_err(|e| self.err("busy handler", e));
        let value = result?;
        restored?;
        Ok(value)
    }

    /// Starts a checkpoint task if a commit on this thread left the WAL
    /// past the mark (see the module docs, *Checkpoints*); it runs once the
    /// connection is free, after the current holder. Outside a Tokio
    /// runtime the mark stays noted for the next write.
    pub(super) fn checkpoint_if_due(&self) {
        if !CHECKPOINT_DUE.with(|d| d.replace(false)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            CHECKPOINT_DUE.with(|d| d.set(true));
            return;
        };
        if self
            .checkpointing
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (state, flag, url) = (
            Arc::clone(&self.state),
            Arc::clone(&self.checkpointing),
            self.url.clone(),
        );
        runtime.spawn(async move {
            let guard = state.lock_owned().await;
            flag.store(false, std::sync::atomic::Ordering::Release);
            let done = tokio::task::spawn_blocking(move || {
                guard
                    .conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(broker = %url, "WAL checkpoint: {e}"),
                Err(e) => tracing::debug!(broker = %url, "WAL checkpoint task failed: {e}"),
            }
        });
    }
}

impl SqliteBroker {
    /// Runs `f` on the connection: here, unless SQLite would have to wait
    /// for another connection's lock; then again on the blocking pool, where
    /// it may wait (see the module docs, *Cost*). `f` must change nothing
    /// before the point where SQLite refuses: every operation starts with
    /// the statement or `BEGIN IMMEDIATE` that takes the lock.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&Inner, &mut State) -> Result<T, Error> + Send + 'static,
    {
        let mut guard = Arc::clone(&self.inner.state).lock_owned().await;
        WOULD_WAIT.with(|w| w.set(false));
        let first = f(&self.inner, &mut guard);
        self.inner.checkpoint_if_due();
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
    pub(super) async fn group_commit<T: Send + 'static>(
        &self,
        pending: fn(&Inner) -> &std::sync::Mutex<Vec<Pending<T>>>,
        item: T,
        commit: fn(&Inner, &mut State, &[T]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (done, mut result) = tokio::sync::oneshot::channel();
        lock_vec(pending(&self.inner)).push(Pending { item, done });
        let guard = tokio::select! {
            biased;
            r = &mut result => return self.committed(r),
            guard = Arc::clone(&self.inner.state).lock_owned() => guard,
        };
        // Committed here, or by whoever had the connection before us.
        commit_pending(&self.inner, guard, pending, commit);
        self.committed(result.await)
    }

    /// [`group_commit`](Self::group_commit) that waits up to `linger`
    /// first, for more writes to join and for the next claim to carry
    /// them ([`super::claim`], *Acks ride on claims*): the first write of a
    /// group starts a task that commits the group after `linger`, unless a
    /// claim committed it before. Each caller still returns only once its
    /// write committed, and the writes are committed even if the callers
    /// stop waiting.
    pub(super) async fn lingering_commit<T: Send + 'static>(
        &self,
        pending: fn(&Inner) -> &std::sync::Mutex<Vec<Pending<T>>>,
        item: T,
        commit: fn(&Inner, &mut State, &[T]) -> Result<(), Error>,
        linger: std::time::Duration,
    ) -> Result<(), Error> {
        let (done, result) = tokio::sync::oneshot::channel();
        let first = {
            let mut waiting = lock_vec(pending(&self.inner));
            waiting.push(Pending { item, done });
            waiting.len() == 1
        };
        if first {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                let guard = Arc::clone(&inner.state).lock_owned().await;
                commit_pending(&inner, guard, pending, commit);
            });
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
}

/// A Vec of pending writes: pushing to it or taking it cannot leave it
/// half-changed, so a poisoned lock is still usable.
fn lock_vec<T>(m: &std::sync::Mutex<Vec<T>>) -> std::sync::MutexGuard<'_, Vec<T>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Commits every write `pending` holds with `commit`, on the connection
/// `guard` holds: here, or on the blocking pool when SQLite would wait for
/// another connection's lock. Hands each writer the outcome.
fn commit_pending<T: Send + 'static>(
    inner: &Arc<Inner>,
    mut guard: tokio::sync::OwnedMutexGuard<State>,
    pending: fn(&Inner) -> &std::sync::Mutex<Vec<Pending<T>>>,
    commit: fn(&Inner, &mut State, &[T]) -> Result<(), Error>,
) {
    let Taken { items, senders } = take_pending(pending(inner));
    if items.is_empty() {
        return;
    }
    WOULD_WAIT.with(|w| w.set(false));
    let first = commit(inner, &mut guard, &items);
    inner.checkpoint_if_due();
    if first.is_err() && WOULD_WAIT.with(|w| w.get()) {
        // Another connection holds the write lock: wait for it on the
        // blocking pool (nothing was written).
        let inner = Arc::clone(inner);
        drop(tokio::task::spawn_blocking(move || {
            let r = inner.waiting(&mut guard, |state| commit(&inner, state, &items));
            drop(guard);
            hand_out(&inner.url, senders, r.as_ref().map(|_| ()));
        }));
    } else {
        drop(guard);
        hand_out(&inner.url, senders, first.as_ref().map(|_| ()));
    }
}

/// The writes taken out of a pending list, and where their outcome goes.
pub(super) struct Taken<T> {
    pub(super) items: Vec<T>,
    senders: Vec<tokio::sync::oneshot::Sender<Result<(), Error>>>,
}

impl<T> Taken<T> {
    /// Hands each writer the outcome of the transaction that held them.
    pub(super) fn finish(self, url: &str, r: Result<(), &Error>) {
        hand_out(url, self.senders, r);
    }
}

/// Takes every write waiting in `pending`: the caller commits them and
/// calls [`Taken::finish`].
pub(super) fn take_pending<T>(pending: &std::sync::Mutex<Vec<Pending<T>>>) -> Taken<T> {
    let (items, senders) = std::mem::take(&mut *lock_vec(pending))
        .into_iter()
        .map(|p| (p.item, p.done))
        .unzip();
    Taken { items, senders }
}

/// Sends a group commit's outcome to each of its writers.
fn hand_out(
    url: &str,
    senders: Vec<tokio::sync::oneshot::Sender<Result<(), Error>>>,
    r: Result<(), &Error>,
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

/// Runs `f` for every item in one write transaction, or in autocommit for
/// a single item (`what` names the operation in errors).
pub(super) fn each_in_one_tx<T>(
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
