//! What the modules of this binary share: the [`Backend`] fixture the
//! contract suite runs on, one per backend, and helpers on deliveries.

use std::time::Duration;

use action_event::Envelope;
use action_event::broker::amqp::AmqpBroker;
use action_event::broker::postgres::PostgresBroker;
use action_event::broker::sqlite::SqliteBroker;
use action_event::broker::{Broker, DeadEvent, Delivery};
use action_event::envelope::{AttemptError, now_ms};

/// A fresh, empty place for events on one backend (a new SQLite file, a new
/// RabbitMQ queue prefix) and the brokers opened on it. Every broker opened
/// on one fixture sees the same events, as the pollers of one app do.
#[allow(async_fn_in_trait)]
pub trait Backend: Sized {
    /// The broker type under test.
    type Broker: Broker;
    /// How long a take waits before the test believes nothing is ready:
    /// SQLite answers at once, RabbitMQ delivers in the background.
    const NOTHING: Duration;
    /// Whether `depth` counts scheduled (delayed) events: `Some(n)` if so,
    /// else `None`.
    const SCHEDULED_COUNTED: bool;
    /// Whether an event `retry` delays comes back with the time it was due
    /// in `run_at_ms` (RabbitMQ) or as the envelope was given (SQLite).
    const RETRY_SETS_RUN_AT: bool;
    /// A fresh place, or `None` (after a loud message) when the backend is
    /// not there and not required.
    async fn new() -> Option<Self>;
    /// Opens one more broker (one more poller) on this place.
    async fn open(&self) -> Self::Broker;
    /// Opens a broker whose events in hand come back to the others soon
    /// (seconds, not minutes) once it is lost.
    async fn open_mortal(&self) -> Self::Broker;
    /// Closes a broker the way a poller that stops does.
    async fn close(b: Self::Broker);
    /// Removes what the test left on the backend.
    async fn clean(&self, b: &Self::Broker);
}

/// The SQLite backend: a database file in a temporary directory.
pub struct Sqlite {
    pub dir: tempfile::TempDir,
}

impl Sqlite {
    /// The URL of this fixture's file with `opts` (`?lease=1s`, ...).
    pub fn url(&self, opts: &str) -> String {
        sqlite_url(&self.dir, opts)
    }
}

/// The URL of `events.db` in `dir` with `opts`.
pub fn sqlite_url(dir: &tempfile::TempDir, opts: &str) -> String {
    let path = dir.path().join("events.db");
    format!("sqlite://{}{opts}", path.display())
}

impl Backend for Sqlite {
    type Broker = SqliteBroker;
    const NOTHING: Duration = Duration::ZERO;
    const SCHEDULED_COUNTED: bool = true;
    const RETRY_SETS_RUN_AT: bool = false;

    async fn new() -> Option<Self> {
        Some(Sqlite {
            dir: tempfile::tempdir().expect("temp dir"),
        })
    }
    async fn open(&self) -> SqliteBroker {
        SqliteBroker::open(&self.url("?poll=20ms"))
            .await
            .expect("open")
    }
    async fn open_mortal(&self) -> SqliteBroker {
        SqliteBroker::open(&self.url("?poll=20ms&lease=1s"))
            .await
            .expect("open")
    }
    async fn close(b: SqliteBroker) {
        drop(b);
    }
    async fn clean(&self, _b: &SqliteBroker) {}
}

/// The RabbitMQ backend: the shared broker (`ACTION_EVENT_AMQP_URL`, default
/// `amqp://guest:guest@127.0.0.1:5672/%2f`) with a random queue prefix.
pub struct Amqp {
    pub prefix: String,
}

impl Amqp {
    /// A broker on this fixture's prefix with `extra` URL options
    /// (`&prefetch=8`); `None` after a loud message when there is no broker.
    pub async fn open_with(&self, extra: &str) -> Option<AmqpBroker> {
        open_amqp(&self.prefix, extra).await
    }
}

impl Backend for Amqp {
    type Broker = AmqpBroker;
    const NOTHING: Duration = Duration::from_millis(500);
    const SCHEDULED_COUNTED: bool = false;
    const RETRY_SETS_RUN_AT: bool = true;

    async fn new() -> Option<Self> {
        let f = Amqp {
            prefix: new_prefix(),
        };
        // Is there a broker? Asked once, so a test skips before it starts.
        f.open_with("").await?.close().await;
        Some(f)
    }
    async fn open(&self) -> AmqpBroker {
        self.open_with("")
            .await
            .expect("RabbitMQ answered a moment ago")
    }
    async fn open_mortal(&self) -> AmqpBroker {
        // Unacked deliveries go back when the connection closes.
        self.open().await
    }
    async fn close(b: AmqpBroker) {
        b.close().await;
    }
    async fn clean(&self, b: &AmqpBroker) {
        b.delete_topology().await.expect("cleanup");
    }
}

/// The shared RabbitMQ's URL: `ACTION_EVENT_AMQP_URL` or the local default.
pub fn amqp_base_url() -> String {
    std::env::var("ACTION_EVENT_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A queue prefix no other test uses.
pub fn new_prefix() -> String {
    format!("test.{}.", uuid::Uuid::now_v7().simple())
}

/// The shared broker's URL with `prefix` and `extra` options.
pub fn amqp_url_with(prefix: &str, extra: &str) -> String {
    let base = amqp_base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}prefix={prefix}{extra}")
}

/// Opens a broker on the shared RabbitMQ, or returns `None` (after a loud
/// message) when there is no RabbitMQ and it is not required.
pub async fn open_amqp(prefix: &str, extra: &str) -> Option<AmqpBroker> {
    match AmqpBroker::open(&amqp_url_with(prefix, extra)).await {
        Ok(b) => Some(b),
        Err(e) => {
            let url = action_event::redact_url(&amqp_base_url());
            if std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() == Ok("1") {
                panic!("no RabbitMQ at {url} but ACTION_EVENT_REQUIRE_AMQP=1: {e}");
            }
            // Straight to the stderr stream: the test harness captures
            // `eprintln!` of passing tests, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no RabbitMQ at {url}: {e} ***\n"
            );
            None
        }
    }
}

/// Queue names as `take` wants them.
pub fn qs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The envelope a delivery carries.
pub fn env_of(d: &Delivery) -> Envelope {
    Envelope::from_slice(&d.body).expect("envelope")
}

/// The dead event a poller would write for `d`, with one error: `reason`.
pub fn dead_of(d: &Delivery, reason: &str) -> DeadEvent {
    let env = env_of(d);
    DeadEvent {
        id: env.id.to_string(),
        name: Some(env.name.clone()),
        queue: d.queue.clone(),
        body: String::from_utf8(d.body.clone()).expect("utf8"),
        attempts: env.attempt,
        errors: vec![AttemptError {
            attempt: env.attempt,
            at_ms: now_ms(),
            message: reason.into(),
        }],
        reason: reason.into(),
        died_at_ms: now_ms(),
    }
}

/// Publishes all at once (concurrently), as many pollers or web requests do.
pub async fn publish_all<B: Broker>(b: &B, envs: &[Envelope]) {
    let futs = envs.iter().map(|e| b.publish(e));
    for r in futures_util::future::join_all(futs).await {
        r.expect("publish");
    }
}

/// Publishes `n` events to `queue`, numbered in `params.i`.
pub async fn publish_numbered<B: Broker>(b: &B, queue: &str, n: u64) {
    for i in 0..n {
        b.publish(&Envelope::new("e", queue, serde_json::json!({ "i": i })))
            .await
            .expect("publish");
    }
}

/// The number `publish_numbered` gave the event of `d`.
pub fn number_of(d: &Delivery) -> u64 {
    env_of(d).params["i"].as_u64().expect("numbered")
}

/// Takes and acks until nothing is ready for `wait`: (queue, number) in take
/// order. None of them may be a redelivery.
pub async fn drain_numbered<B: Broker>(
    b: &B,
    queues: &[String],
    wait: Duration,
) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while let Some(d) = b.take(queues, wait).await.expect("take") {
        assert!(!d.redelivered, "{}", number_of(&d));
        got.push((d.queue.clone(), number_of(&d)));
        b.ack(&d).await.expect("ack");
    }
    got
}

/// `(queue, n)` for each of `numbers`.
pub fn numbered(queue: &str, numbers: &[u64]) -> Vec<(String, u64)> {
    numbers.iter().map(|i| (queue.to_string(), *i)).collect()
}

/// The PostgreSQL backend: the shared server (`ACTION_EVENT_POSTGRES_URL`,
/// default `postgres://postgres@127.0.0.1:5432/test`) with a schema of its
/// own per fixture, dropped by `clean`.
pub struct Postgres {
    pub schema: String,
}

/// The shared PostgreSQL's URL: `ACTION_EVENT_POSTGRES_URL` or the local default.
pub fn postgres_base_url() -> String {
    std::env::var("ACTION_EVENT_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema name no other test uses.
pub fn new_schema() -> String {
    format!("test_{}", uuid::Uuid::now_v7().simple())
}

/// The URL of `schema` on the shared server with `extra` options (`&lease=1s`).
pub fn postgres_url(schema: &str, extra: &str) -> String {
    let base = postgres_base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={schema}&pool=4{extra}")
}

/// Opens a broker on `schema`, or returns `None` (after a loud message)
/// when there is no PostgreSQL and it is not required
/// (`ACTION_EVENT_REQUIRE_POSTGRES=1`).
pub async fn open_postgres(schema: &str, extra: &str) -> Option<PostgresBroker> {
    match PostgresBroker::open(&postgres_url(schema, extra)).await {
        Ok(b) => Some(b),
        Err(e) => {
            let url = action_event::redact_url(&postgres_base_url());
            if std::env::var("ACTION_EVENT_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("no PostgreSQL at {url} but ACTION_EVENT_REQUIRE_POSTGRES=1: {e}");
            }
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no PostgreSQL at {url}: {e} ***\n"
            );
            None
        }
    }
}

/// Drops `schema` and everything in it.
pub async fn drop_schema(pool: &action_event::sqlx::PgPool, schema: &str) {
    action_event::sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(pool)
        .await
        .expect("drop schema");
}

impl Backend for Postgres {
    type Broker = PostgresBroker;
    const NOTHING: Duration = Duration::ZERO;
    const SCHEDULED_COUNTED: bool = true;
    const RETRY_SETS_RUN_AT: bool = false;

    async fn new() -> Option<Self> {
        let f = Postgres {
            schema: new_schema(),
        };
        drop(open_postgres(&f.schema, "").await?);
        Some(f)
    }
    async fn open(&self) -> PostgresBroker {
        open_postgres(&self.schema, "")
            .await
            .expect("PostgreSQL answered a moment ago")
    }
    async fn open_mortal(&self) -> PostgresBroker {
        // Its events come back once its owner lock is gone; the lease is
        // the fallback.
        open_postgres(&self.schema, "&lease=2s")
            .await
            .expect("PostgreSQL answered a moment ago")
    }
    async fn close(b: PostgresBroker) {
        drop(b);
    }
    async fn clean(&self, b: &PostgresBroker) {
        drop_schema(b.pool(), &self.schema).await;
    }
}
