//! Who holds a claim, and for how long.
//!
//! # Owners: a session advisory lock
//!
//! Each open broker has a row in `owners` and holds the session advisory
//! lock `(schema key, owner id)` on a connection of its own (the one its
//! heartbeat uses) for as long as it lives. Every claim writes the owner id into the event row. When a
//! poller dies (SIGKILL, a crash, a machine gone), PostgreSQL ends its
//! sessions and the lock goes with them: every broker looks once a second
//! (and on open) for owners whose lock is gone, deletes them and makes
//! their events ready again at once, marked redelivered.
//!
//! # Leases
//!
//! A claim also sets the row's `visible_at` to now + `lease`; the heartbeat
//! (every `lease`/3) moves it on for every delivery the broker holds. A
//! poller that is alive but stalled longer than its lease loses its events
//! to the others, as with SQLite; its late settle then leaves the row alone
//! and warns that the event may run twice.
//!
//! # Status
//!
//! A poller that [announces](crate::broker::Broker::announce) itself writes
//! its report into its `owners` row every second; `poller status` on any
//! machine reads the rows whose owner lock is held.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};

use super::{Inner, now_i64, schema};
use crate::Error;
use crate::broker::{PollerReport, Presence};
use crate::poller::pidfile;

/// How often a broker looks for owners that are gone, and refreshes its
/// poller report.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// An owner newer than this is not judged by its lock: it may not have
/// taken it yet.
const REGISTER_GRACE_MS: i64 = 10_000;

/// The SQL of one schema, built once per broker.
pub(super) struct Sql {
    pub(super) key: i32,
    pub(super) insert: String,
    pub(super) insert_new: String,
    pub(super) claim: String,
    pub(super) any_ready: String,
    pub(super) unclaim: String,
    pub(super) next_due: String,
    pub(super) extend: String,
    pub(super) ack: String,
    pub(super) retry: String,
    pub(super) release: String,
    pub(super) reclaim: String,
    pub(super) depth: String,
}

/// Whether owner `o.id` holds its lock (`$1` the schema key).
fn alive(key_param: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
         AND l.objsubid = 2 AND l.classid::bigint = {key_param} \
         AND l.objid::bigint = o.id % 2147483647)"
    )
}

impl Sql {
    pub(super) fn new(s: &str) -> Sql {
        Sql {
            key: schema::lock_key(s),
            // `$1` event ids, `$2` queues, `$3` names, `$4` bodies, `$5`
            // visible_at, `$6` queued_at: one row or many in one statement.
            insert: format!(
                "INSERT INTO {s}.events (event_id, queue, name, body, visible_at, queued_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) \
                 ON CONFLICT (event_id) DO NOTHING"
            ),
            // The same, failing on an event id already stored (no
            // speculative insertion: cheaper, see `publish`).
            insert_new: format!(
                "INSERT INTO {s}.events (event_id, queue, name, body, visible_at, queued_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])"
            ),
            // `$1` queue, `$2` now, `$3` lease end, `$4` claim, `$5` owner,
            // `$6` how many: the first ready rows of one queue (see
            // `claim`), with their visible_at before the claim.
            claim: format!(
                "WITH picked AS (SELECT id, visible_at FROM {s}.events WHERE queue = $1 AND visible_at <= $2 \
                 ORDER BY visible_at, id LIMIT $6 FOR UPDATE SKIP LOCKED) \
                 UPDATE {s}.events e SET visible_at = $3, claim = $4, owner = $5, deliveries = e.deliveries + 1 \
                 FROM picked WHERE e.id = picked.id \
                 RETURNING e.id, e.event_id, e.body, e.deliveries, picked.visible_at"
            ),
            // `$1` queues, `$2` now: whether one of them has a ready event,
            // and when the earliest not ready yet is due.
            any_ready: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.events WHERE queue = ANY($1) AND visible_at <= $2), \
                 (SELECT MIN((SELECT visible_at FROM {s}.events WHERE queue = q AND visible_at > $2 \
                 ORDER BY visible_at LIMIT 1)) FROM UNNEST($1::text[]) AS q)"
            ),
            // `$1` row ids, `$2` their claims, `$3` their visible_at before
            // the claim: events claimed ahead go back as they were.
            unclaim: format!(
                "UPDATE {s}.events e SET visible_at = v.visible_at, claim = NULL, owner = NULL, \
                 deliveries = e.deliveries - 1 \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS v(id, claim, visible_at) \
                 WHERE e.id = v.id AND e.claim = v.claim"
            ),
            // `$1` queues, `$2` now: the earliest time an event of one of
            // them becomes ready (one index probe per queue).
            next_due: format!(
                "SELECT MIN((SELECT visible_at FROM {s}.events WHERE queue = q AND visible_at > $2 \
                 ORDER BY visible_at LIMIT 1)) FROM UNNEST($1::text[]) AS q"
            ),
            // `$1` row ids, `$2` owner, `$3` lease end.
            extend: format!(
                "UPDATE {s}.events SET visible_at = $3 WHERE id = ANY($1) AND owner = $2"
            ),
            // `$1` row id, `$2` claim.
            ack: format!("DELETE FROM {s}.events WHERE id = $1 AND claim = $2"),
            // `$1` row id, `$2` claim, `$3` body, `$4` visible_at. Tells
            // every broker when the event is due (the payload: see `wait`):
            // one row if the claim was still this delivery's.
            retry: format!(
                "WITH r AS (UPDATE {s}.events SET body = $3, visible_at = $4, claim = NULL, owner = NULL, \
                 deliveries = 0 WHERE id = $1 AND claim = $2 RETURNING visible_at) \
                 SELECT pg_notify('{channel}', r.visible_at::text) FROM r",
                channel = schema::channel(s)
            ),
            // `$1` row id, `$2` claim, `$3` now. Ready now: every broker is
            // told (one row if the claim was still this delivery's).
            release: format!(
                "WITH r AS (UPDATE {s}.events SET visible_at = $3, claim = NULL, owner = NULL \
                 WHERE id = $1 AND claim = $2 RETURNING 1) \
                 SELECT pg_notify('{channel}', '') FROM r",
                channel = schema::channel(s)
            ),
            // `$1` key, `$2` now: owners gone, deleted, their events ready.
            reclaim: format!(
                "WITH gone AS (DELETE FROM {s}.owners o WHERE o.since < $2 - {REGISTER_GRACE_MS} \
                 AND NOT {alive} RETURNING o.id), \
                 back AS (UPDATE {s}.events SET visible_at = $2, claim = NULL, owner = NULL \
                 WHERE owner IN (SELECT id FROM gone) RETURNING 1) \
                 SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM back)",
                alive = alive("$1")
            ),
            // `$1` queue, `$2` now.
            depth: format!(
                "SELECT count(*) FILTER (WHERE visible_at <= $2), \
                 count(*) FILTER (WHERE visible_at > $2 AND claim IS NULL), \
                 MIN(queued_at) FILTER (WHERE visible_at <= $2) FROM {s}.events WHERE queue = $1"
            ),
        }
    }
}

/// Registers a new owner and takes its lock on a connection of its own,
/// which the heartbeat then uses (and opens again if it is lost).
pub(super) async fn register(
    pool: &PgPool,
    url: &str,
    schema: &str,
    sql: &Sql,
) -> Result<(i64, PgConnection), Error> {
    let mut conn = connect(pool, url).await?;
    let insert =
        format!("INSERT INTO {schema}.owners (host, pid, since) VALUES ($1, $2, $3) RETURNING id");
    let id: i64 = sqlx::query_scalar(&insert)
        .bind(pidfile::hostname())
        .bind(i64::from(std::process::id()))
        .bind(now_i64())
        .fetch_one(&mut conn)
        .await
        .map_err(|e| Error::broker_caused(url, "registering this broker", e))?;
    lock(&mut conn, url, sql.key, id).await?;
    Ok((id, conn))
}

async fn connect(pool: &PgPool, url: &str) -> Result<PgConnection, Error> {
    let options = pool.connect_options();
    PgConnection::connect_with(&options)
        .await
        .map_err(|e| Error::broker_caused(url, "owner connection", e))
}

async fn lock(conn: &mut PgConnection, url: &str, key: i32, id: i64) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_lock($1, ($2 % 2147483647)::int)")
        .bind(key)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::broker_caused(url, "owner lock", e))?;
    Ok(())
}

/// Opens the owner connection again after it was lost: the owner row comes
/// back with the same id (another broker may have deleted it, seeing the
/// lock gone) and the lock is taken again.
async fn reconnect(inner: &Inner) -> Result<PgConnection, Error> {
    let mut conn = connect(&inner.pool, &inner.url).await?;
    let insert = format!(
        "INSERT INTO {}.owners (id, host, pid, since) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
        inner.cfg.schema
    );
    sqlx::query(&insert)
        .bind(inner.owner)
        .bind(pidfile::hostname())
        .bind(i64::from(std::process::id()))
        .bind(now_i64())
        .execute(&mut conn)
        .await
        .map_err(|e| inner.err("owner", e))?;
    lock(&mut conn, &inner.url, inner.sql.key, inner.owner).await?;
    Ok(conn)
}

/// Listens for the notifications of new events and wakes a waiting take
/// (payload empty: something is ready now; a number: an event is due at
/// that time, see [`super::wait`]); after a lost connection (sqlx
/// reconnects it and listens again), wakes every take: a notification may
/// have been missed. Ends with the broker.
pub(super) async fn listen(inner: Weak<Inner>, mut listener: PgListener) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let got = listener.try_recv().await;
        let Some(inner) = inner.upgrade() else { return };
        match got {
            Ok(Some(n)) => {
                backoff = Duration::from_millis(100);
                match n.payload().parse::<i64>() {
                    Ok(due_ms) => inner.waiter.due(due_ms),
                    Err(_) => inner.waiter.bump(),
                }
            }
            Ok(None) => inner.waiter.bump_all(),
            Err(e) => {
                tracing::warn!(broker = %inner.url, "LISTEN connection: {e}; reconnecting");
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Opens the `LISTEN` connection.
pub(super) async fn listener(pool: &PgPool, url: &str, schema: &str) -> Result<PgListener, Error> {
    let mut listener = PgListener::connect_with(pool)
        .await
        .map_err(|e| Error::broker_caused(url, "LISTEN connection", e))?;
    let channel = schema::channel(schema);
    listener
        .listen(&channel)
        .await
        .map_err(|e| Error::broker_caused(url, "LISTEN", e))?;
    Ok(listener)
}

/// Keeps the leases of the deliveries held (every `lease`/3), brings back
/// the events of owners gone and refreshes the poller report (every
/// second), on the owner connection, which holds this broker's lock: if it
/// is lost, it is opened again. Ends with the broker.
pub(super) async fn heartbeat(inner: Weak<Inner>, conn: PgConnection) {
    let every = {
        let Some(i) = inner.upgrade() else { return };
        (i.cfg.lease / 3).min(LOOK_EVERY)
    };
    let mut conn = Some(conn);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_look = std::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut c = match conn.take() {
            Some(c) => c,
            None => match reconnect(&inner).await {
                Ok(c) => {
                    tracing::info!(broker = %inner.url, "owner connection back");
                    c
                }
                Err(e) => {
                    tracing::warn!(broker = %inner.url, "{e}");
                    continue;
                }
            },
        };
        let mut ok = true;
        if let Err(e) = extend(&inner, &mut c).await {
            tracing::warn!(broker = %inner.url, "lease heartbeat: {e}");
            ok = false;
        }
        if ok && last_look.elapsed() >= LOOK_EVERY.saturating_sub(Duration::from_millis(50)) {
            last_look = std::time::Instant::now();
            match reclaim_on(&inner, &mut c).await {
                Ok(n) if n > 0 => notify(&inner, &mut c).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(broker = %inner.url, "{e}");
                    ok = false;
                }
            }
            if let Err(e) = write_report(&inner, &mut c).await {
                tracing::debug!(broker = %inner.url, "poller report: {e}");
            }
            super::ahead::give_back_stale(&inner).await;
        }
        // A connection that failed is dropped (and with it, maybe, the
        // lock): the next tick opens a new one and takes the lock again.
        if ok {
            conn = Some(c);
        }
    }
}

/// Wakes the idle pollers of every broker on this schema (events came back).
async fn notify(inner: &Inner, conn: &mut PgConnection) {
    let channel = schema::channel(&inner.cfg.schema);
    if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
        .bind(&channel)
        .execute(&mut *conn)
        .await
    {
        tracing::debug!(broker = %inner.url, "notify: {e}");
    }
}

async fn extend(inner: &Inner, conn: &mut PgConnection) -> Result<(), Error> {
    let ids: Vec<i64> = inner.held().iter().copied().collect();
    if ids.is_empty() {
        // The lock's connection is still there (a cheap round trip).
        return sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(|e| inner.err("owner connection", e));
    }
    sqlx::query(&inner.sql.extend)
        .bind(&ids)
        .bind(inner.owner)
        .bind(now_i64().saturating_add(inner.lease_ms()))
        .execute(&mut *conn)
        .await
        .map_err(|e| inner.err("lease heartbeat", e))?;
    Ok(())
}

/// Deletes the owners whose lock is gone and makes their events ready now.
/// Returns how many events came back.
pub(super) async fn reclaim_gone(inner: &Inner) -> Result<i64, Error> {
    let mut conn = inner
        .pool
        .acquire()
        .await
        .map_err(|e| inner.err("bringing back the events of pollers gone", e))?;
    let n = reclaim_on(inner, &mut conn).await?;
    if n > 0 {
        notify(inner, &mut conn).await;
    }
    Ok(n)
}

async fn reclaim_on(inner: &Inner, conn: &mut PgConnection) -> Result<i64, Error> {
    let (owners, events): (i64, i64) = sqlx::query_as(&inner.sql.reclaim)
        .bind(i64::from(inner.sql.key))
        .bind(now_i64())
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| inner.err("bringing back the events of pollers gone", e))?;
    if owners > 0 {
        tracing::info!(
            broker = %inner.url,
            "{owners} poller(s) gone: {events} event(s) they held are ready again"
        );
    }
    Ok(events)
}

/// Makes this broker's poller visible to `poller status` on any machine.
pub(super) async fn announce(inner: &Inner, presence: Arc<dyn Presence>) -> Result<(), Error> {
    *inner.presence.lock().unwrap_or_else(|p| p.into_inner()) = Some(presence);
    let mut conn = inner
        .pool
        .acquire()
        .await
        .map_err(|e| inner.err("poller report", e))?;
    write_report(inner, &mut conn).await
}

async fn write_report(inner: &Inner, conn: &mut PgConnection) -> Result<(), Error> {
    let presence = inner
        .presence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(presence) = presence else {
        return Ok(());
    };
    let report = serde_json::to_string(&presence.report())
        .map_err(|e| Error::broker(&inner.url, format!("poller report: {e}")))?;
    let update = format!(
        "UPDATE {}.owners SET report = $2 WHERE id = $1",
        inner.cfg.schema
    );
    sqlx::query(&update)
        .bind(inner.owner)
        .bind(report)
        .execute(&mut *conn)
        .await
        .map_err(|e| inner.err("poller report", e))?;
    Ok(())
}

/// The reports of the live pollers on this schema, from every machine.
pub(super) async fn pollers(inner: &Inner) -> Result<Vec<PollerReport>, Error> {
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT o.report FROM {}.owners o WHERE o.report IS NOT NULL AND {} ORDER BY o.id",
        inner.cfg.schema,
        alive("$1")
    ))
    .bind(i64::from(inner.sql.key))
    .fetch_all(&inner.pool)
    .await
    .map_err(|e| inner.err("poller status", e))?;
    let mut out = Vec::new();
    for (json,) in rows {
        match serde_json::from_str::<PollerReport>(&json) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(broker = %inner.url, "a poller report is not readable: {e}"),
        }
    }
    Ok(out)
}
