//! Poller reports in the file: what `poller status` and the dashboard show
//! of every poller using it, whether or not it has a PID file.
//!
//! A poller that announces itself ([`Broker::announce`]) gets a row in
//! `poller_reports`: its process (pid, start time, boot, PID namespace, as
//! in [`super::owner`]) and its report as JSON, rewritten every
//! second. [`Broker::pollers`] reads the rows and keeps those whose
//! process still runs (the kernel says so, as for claim owners); a row whose
//! process cannot be checked (another PID namespace or boot) counts while
//! it was rewritten within the last 5 seconds. Rows of processes that are gone are
//! deleted by the next reader. A broker that closes deletes its own row.
//!
//! The table is created (`IF NOT EXISTS`) at every open, with no schema
//! version bump: an older build ignores it (its pollers show only through
//! their PID files). Where this process cannot be described (no `/proc`),
//! nothing is written and [`Broker::pollers`] answers `None`: the PID
//! files are the view, as before.
//!
//! [`Broker::announce`]: crate::broker::Broker::announce
//! [`Broker::pollers`]: crate::broker::Broker::pollers

use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::params;

use super::conn::Inner;
use super::owner::{Liveness, Process};
use super::{SqliteBroker, now_i64};
use crate::Error;
use crate::broker::{PollerReport, Presence};

/// Run at every open, inside the schema transaction.
pub(super) const TABLE: &str = "CREATE TABLE IF NOT EXISTS poller_reports (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    pid     INTEGER NOT NULL,
    started INTEGER NOT NULL,
    boot    TEXT NOT NULL,
    pid_ns  TEXT NOT NULL,
    report  TEXT NOT NULL,
    at      INTEGER NOT NULL
);";

/// How often a poller rewrites its report (its slots and counts).
pub(super) const EVERY: Duration = Duration::from_secs(1);

/// How long the report of a process that cannot be checked counts after
/// its last rewrite.
pub(super) const STALE: Duration = Duration::from_secs(5);

/// This broker's row and the task that rewrites it.
pub(super) struct Announced {
    pub(super) id: i64,
    pub(super) task: tokio::task::AbortHandle,
}

fn to_json(inner: &Inner, presence: &dyn Presence) -> Result<String, Error> {
    serde_json::to_string(&presence.report()).map_err(|e| inner.err("poller report", e))
}

/// Writes this poller's row and starts rewriting it every [`EVERY`] until
/// the broker closes. Announcing again replaces the earlier presence.
pub(super) async fn announce(
    broker: &SqliteBroker,
    presence: Arc<dyn Presence>,
) -> Result<(), Error> {
    let Some(me) = Process::me() else {
        return Ok(());
    };
    let report = to_json(&broker.inner, &*presence)?;
    let id = broker
        .run(move |inner, state| {
            state
                .conn
                .prepare_cached(
                    "INSERT INTO poller_reports (pid, started, boot, pid_ns, report, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        i64::from(me.pid),
                        i64::try_from(me.started).unwrap_or(i64::MAX),
                        me.boot,
                        me.pid_ns,
                        report,
                        now_i64()
                    ])
                })
                .map_err(|e| inner.err("poller report", e))?;
            Ok(state.conn.last_insert_rowid())
        })
        .await?;
    let task = tokio::spawn(rewrite(Arc::downgrade(&broker.inner), id, presence)).abort_handle();
    let earlier = broker
        .presence
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(Announced { id, task });
    if let Some(earlier) = earlier {
        earlier.task.abort();
        let res = broker
            .run(move |inner, state| delete(inner, state, earlier.id))
            .await;
        if let Err(e) = res {
            tracing::debug!(broker = %broker.inner.url, "an earlier poller report stays until its reader sees the process gone: {e}");
        }
    }
    Ok(())
}

/// Rewrites row `id` with `presence`'s report every [`EVERY`].
async fn rewrite(inner: Weak<Inner>, id: i64, presence: Arc<dyn Presence>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let report = match to_json(&inner, &*presence) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(broker = %inner.url, "{e}");
                continue;
            }
        };
        let url = inner.url.clone();
        let work = move || {
            let mut state = inner.state.blocking_lock();
            inner.waiting(&mut state, |state| {
                state
                    .conn
                    .prepare_cached("UPDATE poller_reports SET report = ?2, at = ?3 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id, report, now_i64()]))
                    .map(drop)
                    .map_err(|e| inner.err("poller report", e))
            })
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(broker = %url, "{e}"),
            Err(e) => tracing::debug!(broker = %url, "poller report task failed: {e}"),
        }
    }
}

/// Deletes row `id` (a broker that closes, or a process that is gone).
pub(super) fn delete(inner: &Inner, state: &mut super::conn::State, id: i64) -> Result<(), Error> {
    state
        .conn
        .prepare_cached("DELETE FROM poller_reports WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map(drop)
        .map_err(|e| inner.err("poller report", e))
}

/// The reports of the live pollers of the file; `None` where this process
/// cannot check others (no `/proc`). Rows of processes that are gone are
/// deleted (best effort: a reader that cannot write still answers).
pub(super) async fn pollers(broker: &SqliteBroker) -> Result<Option<Vec<PollerReport>>, Error> {
    let Some(me) = Process::me() else {
        return Ok(None);
    };
    let (reports, gone) = broker
        .run(move |inner, state| {
            let fail = |e: rusqlite::Error| inner.err("poller reports", e);
            let mut stmt = state
                .conn
                .prepare_cached(
                    "SELECT id, pid, started, boot, pid_ns, report, at FROM poller_reports \
                     ORDER BY id",
                )
                .map_err(fail)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        Process::from_row(r, 1)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(fail)?;
            let fresh_since = now_i64() - super::dur_ms(STALE);
            let (mut reports, mut gone) = (Vec::new(), Vec::new());
            for (id, process, json, at) in rows {
                let live = match process.liveness(me) {
                    Liveness::Alive => true,
                    Liveness::Gone => false,
                    Liveness::Unknown => at >= fresh_since,
                };
                if !live {
                    if process.liveness(me) == Liveness::Gone {
                        gone.push(id);
                    }
                    continue;
                }
                match serde_json::from_str::<PollerReport>(&json) {
                    Ok(r) => reports.push(r),
                    Err(e) => tracing::warn!(
                        broker = %inner.url,
                        "the report of poller process {} is not readable: {e}",
                        process.pid
                    ),
                }
            }
            Ok((reports, gone))
        })
        .await?;
    if !gone.is_empty() {
        let res = broker
            .run(move |inner, state| {
                for id in &gone {
                    delete(inner, state, *id)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = res {
            tracing::debug!(broker = %broker.inner.url, "reports of gone pollers not deleted: {e}");
        }
    }
    Ok(Some(reports))
}
