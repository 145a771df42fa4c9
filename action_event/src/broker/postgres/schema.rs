//! The tables and their versioned migrations.
//!
//! Every table lives in one schema (`?schema=`, default `action_event`),
//! created when missing. `<schema>.schema_migrations` lists the versions
//! applied. Opening a broker applies the missing ones (unless
//! `?migrate=off`), in one transaction that first takes a transaction-level
//! advisory lock: any number of pollers starting at once apply each
//! migration exactly once, the others wait for it and find it done. A
//! database newer than this build (a version it does not know) is refused.
//!
//! Teams that apply migrations themselves print them with
//! `poller migrate --print` ([`migration_sql`]), run the SQL with their tool,
//! and open brokers with `?migrate=off`: opening then only checks that the
//! schema is up to date.
//!
//! Version 1: `events` (waiting, delayed and taken events), `dead_events`,
//! `owners` (one row per open broker: who holds a claim, and what a poller
//! reports for `poller status`), and the trigger that wakes idle pollers
//! (`NOTIFY` on every insert into `events`, so events queued in the app's
//! own transaction wake them at its commit).
//!
//! Version 2: `paused_queues` (one row per paused queue, see [`super::pause`]).
//!
//! Version 3: `periodic_ticks` (the last tick queued per periodic event, see
//! [`super::tick`]).
//!
//! Version 4: the index `events_scheduled` on `events (visible_at, id)
//! WHERE claim IS NULL`, for the Scheduled page
//! (`super::depth::scheduled_list`): without it, listing the next 50
//! events not due yet sorted the whole table. `CREATE INDEX` (not
//! `CONCURRENTLY`, which cannot run inside the migration's transaction)
//! holds off inserts into `events` while it is built: a second or so per
//! million events waiting.

use sqlx::{Executor, PgConnection, Row};

use crate::Error;

/// The newest schema version this build knows.
///
/// ```
/// assert!(action_event::broker::postgres::SCHEMA_VERSION >= 1);
/// ```
pub const SCHEMA_VERSION: i32 = 4;

/// The migrations: version, SQL with `{schema}` for the schema name.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3), (4, V4)];

const V1: &str = "
CREATE TABLE {schema}.events (
    id          BIGSERIAL PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    queue       TEXT NOT NULL,
    name        TEXT,
    body        TEXT NOT NULL,
    visible_at  BIGINT NOT NULL,
    claim       BIGINT,
    owner       BIGINT,
    deliveries  INTEGER NOT NULL DEFAULT 0,
    queued_at   BIGINT NOT NULL
);
CREATE INDEX events_ready ON {schema}.events (queue, visible_at, id);
CREATE INDEX events_owner ON {schema}.events (owner) WHERE owner IS NOT NULL;
CREATE TABLE {schema}.dead_events (
    id        BIGSERIAL PRIMARY KEY,
    event_id  TEXT NOT NULL,
    name      TEXT,
    queue     TEXT NOT NULL,
    body      TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    errors    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    died_at   BIGINT NOT NULL
);
CREATE INDEX dead_events_event_id ON {schema}.dead_events (event_id);
CREATE TABLE {schema}.owners (
    id       BIGSERIAL PRIMARY KEY,
    host     TEXT NOT NULL,
    pid      BIGINT NOT NULL,
    since    BIGINT NOT NULL,
    report   TEXT
);
CREATE FUNCTION {schema}.notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{schema}.events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON {schema}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_events();
";

const V2: &str = "
CREATE TABLE {schema}.paused_queues (
    queue      TEXT PRIMARY KEY,
    paused_at  BIGINT NOT NULL
);
";

const V3: &str = "
CREATE TABLE {schema}.periodic_ticks (
    name       TEXT PRIMARY KEY,
    last_tick  BIGINT NOT NULL,
    queued_at  BIGINT NOT NULL
);
";

const V4: &str = "
CREATE INDEX events_scheduled ON {schema}.events (visible_at, id) WHERE claim IS NULL;
";

/// The channel the insert trigger notifies.
pub(super) fn channel(schema: &str) -> String {
    format!("{schema}.events")
}

/// The key of the advisory locks of `schema` (migrations: `(key, 0)`;
/// owners: `(key, owner id)`): a stable hash of the schema name.
pub(super) fn lock_key(schema: &str) -> i32 {
    // FNV-1a, 32 bits, kept positive: the same in every process and build.
    let mut h: u32 = 0x811c_9dc5;
    for b in b"action_event:".iter().chain(schema.as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

/// The SQL that brings `schema` from nothing to [`SCHEMA_VERSION`], for
/// teams that apply migrations with their own tool (`poller migrate
/// --print`). It records each version in `<schema>.schema_migrations`,
/// so brokers opened with `?migrate=off` accept the result.
///
/// ```
/// let sql = action_event::broker::postgres::migration_sql("jobs").unwrap();
/// assert!(sql.contains("CREATE TABLE jobs.events"));
/// assert!(action_event::broker::postgres::migration_sql("Jobs; drop").is_err());
/// ```
pub fn migration_sql(schema: &str) -> Result<String, Error> {
    super::options::check_schema(schema).map_err(|m| Error::BadUrl {
        url: format!("?schema={schema}"),
        message: m,
    })?;
    let mut sql = format!(
        "-- action_event schema `{schema}`, versions 1 to {SCHEMA_VERSION}\nBEGIN;\n{}\n",
        preamble(schema)
    );
    for (version, body) in MIGRATIONS {
        sql.push_str(&format!("\n-- version {version}\n"));
        sql.push_str(body.replace("{schema}", schema).trim());
        sql.push_str(&format!(
            "\nINSERT INTO {schema}.schema_migrations (version) VALUES ({version});\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    Ok(sql)
}

fn preamble(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};\n\
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (\n    \
             version    INTEGER PRIMARY KEY,\n    \
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()\n);"
    )
}

/// Applies the migrations `schema` lacks, on one connection, under the
/// migration lock (module docs). Returns the versions it applied.
pub(super) async fn migrate(
    conn: &mut PgConnection,
    url: &str,
    schema: &str,
) -> Result<Vec<i32>, Error> {
    // BEGIN and COMMIT by hand: with sqlx's `Transaction` here, rustc could
    // not prove the futures that await this one `Send`.
    (&mut *conn)
        .execute("BEGIN")
        .await
        .map_err(|e| Error::broker_caused(url, format!("migrating schema `{schema}`: begin"), e))?;
    let result = migrate_in_tx(conn, url, schema).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = (&mut *conn).execute(end).await;
    let applied = result?;
    ended.map_err(|e| {
        Error::broker_caused(url, format!("migrating schema `{schema}`: commit"), e)
    })?;
    for v in &applied {
        tracing::info!(broker = %url, "PostgreSQL schema `{schema}`: migration {v} applied");
    }
    Ok(applied)
}

async fn migrate_in_tx(
    conn: &mut PgConnection,
    url: &str,
    schema: &str,
) -> Result<Vec<i32>, Error> {
    let fail = |what: &str, e: sqlx::Error| {
        Error::broker_caused(url, format!("migrating schema `{schema}`: {what}"), e)
    };
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(lock_key(schema))
        .execute(&mut *conn)
        .await
        .map_err(|e| fail("lock", e))?;
    let preamble = preamble(schema);
    (&mut *conn)
        .execute(preamble.as_str())
        .await
        .map_err(|e| fail("schema_migrations", e))?;
    let current = current_version(&mut *conn, url, schema).await?;
    let bodies: Vec<(i32, String, String)> = MIGRATIONS
        .iter()
        .filter(|(v, _)| *v > current)
        .map(|(v, body)| {
            (
                *v,
                body.replace("{schema}", schema),
                format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
            )
        })
        .collect();
    let mut applied = Vec::new();
    for (version, body, record) in &bodies {
        (&mut *conn)
            .execute(body.as_str())
            .await
            .map_err(|e| fail(&format!("version {version}"), e))?;
        sqlx::query(record)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(|e| fail(&format!("version {version}"), e))?;
        applied.push(*version);
    }
    Ok(applied)
}

/// Checks that `schema` is at [`SCHEMA_VERSION`] without changing it
/// (`?migrate=off`).
pub(super) async fn check(conn: &mut PgConnection, url: &str, schema: &str) -> Result<(), Error> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables \
         WHERE table_schema = $1 AND table_name = 'schema_migrations')",
    )
    .bind(schema)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| Error::broker_caused(url, format!("checking schema `{schema}`"), e))?;
    let current = if exists {
        current_version(conn, url, schema).await?
    } else {
        0
    };
    if current < SCHEMA_VERSION {
        return Err(Error::broker(
            url,
            format!(
                "schema `{schema}` is at version {current}, this build needs {SCHEMA_VERSION}, \
                 and the URL says `migrate=off`: run `poller migrate` (or apply \
                 `poller migrate --print`) first"
            ),
        ));
    }
    Ok(())
}

async fn current_version(conn: &mut PgConnection, url: &str, schema: &str) -> Result<i32, Error> {
    let sql = format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.schema_migrations");
    let row = sqlx::query(&sql)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| Error::broker_caused(url, format!("reading the version of `{schema}`"), e))?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(Error::broker(
            url,
            format!(
                "schema `{schema}` has version {current}, newer than this build supports \
                 ({SCHEMA_VERSION}): it was migrated by a newer action_event; upgrade this program"
            ),
        ));
    }
    Ok(current)
}
