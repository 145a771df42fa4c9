//! End to end, transactional enqueue on PostgreSQL: an event queued with
//! `.on(&mut tx)` exists if and only if the app's transaction commits.
//! A real poller process runs what committed; the app that commits and is
//! then killed with SIGKILL is a real process too (this test binary run
//! again as `app_process`, see there). Skips loudly without PostgreSQL
//! unless `ACTION_EVENT_REQUIRE_POSTGRES=1`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use action_event::sqlx::{self, Connection};
use action_event::{Client, Error, QueueRequest};

fn record(tag: &str) -> QueueRequest {
    QueueRequest::foreign("record")
        .param("tag", tag)
        .queue("medium")
}

async fn events_in(w: &World) -> i64 {
    let schema = w.schema().expect("schema");
    let mut c = sqlx::PgConnection::connect(POSTGRES_URL)
        .await
        .expect("connect");
    sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.events"))
        .fetch_one(&mut c)
        .await
        .expect("count")
}

/// Rolled back: the event never existed and never runs. Committed: it
/// runs, once. Both in the same queue, the rolled-back one first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_never_runs_commit_runs() {
    if !postgres_available() {
        return;
    }
    let w = World::new(&Backend::Postgres);
    let client = w.client().await;
    let pool = sqlx::PgPool::connect(POSTGRES_URL).await.expect("pool");

    let mut tx = pool.begin().await.expect("begin");
    let rolled = client
        .scope(record("rolled-back").send().on(&mut tx))
        .await
        .expect("queue in tx");
    // Inside the transaction the row is there; outside, not yet.
    assert_eq!(events_in(&w).await, 0, "not visible before the commit");
    tx.rollback().await.expect("rollback");

    let mut tx = pool.begin().await.expect("begin");
    let committed = client
        .scope(record("committed").send().on(&mut *tx))
        .await
        .expect("queue in tx");
    assert_ne!(rolled, committed);
    tx.commit().await.expect("commit");
    assert_eq!(events_in(&w).await, 1, "only the committed event exists");

    let mut poller = w.spawn("p.log", &["--queues", "medium"]);
    let records = w.wait_records(Duration::from_secs(30), "the committed event", |r| {
        r.iter().any(|r| r.what == "end" && r.tag == "committed")
    });
    stop(&mut poller, "poller");
    assert_eq!(
        of_tag(&records, "committed").len(),
        2,
        "start and end, once"
    );
    assert!(of_tag(&w.records(), "rolled-back").is_empty());
    assert_eq!(events_in(&w).await, 0);
}

/// A batch (`queue_many(..).on(&mut tx)`, one multi-row insert): rolled
/// back, none of its 100 events exists or runs; committed, all 100 run,
/// once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_a_transaction_is_queued_all_or_none() {
    if !postgres_available() {
        return;
    }
    let w = World::new(&Backend::Postgres);
    let client = w.client().await;
    let pool = sqlx::PgPool::connect(POSTGRES_URL).await.expect("pool");
    let batch = |prefix: &'static str| (0..100).map(move |i| record(&format!("{prefix}-{i}")));

    let mut tx = pool.begin().await.expect("begin");
    let rolled = client
        .scope(action_event::queue_many(batch("rolled")).on(&mut tx))
        .await
        .expect("queue the batch in tx");
    assert_eq!(rolled.len(), 100);
    assert_eq!(events_in(&w).await, 0, "not visible before the commit");
    tx.rollback().await.expect("rollback");
    assert_eq!(events_in(&w).await, 0, "rolled back: none");

    let mut tx = pool.begin().await.expect("begin");
    let committed = client
        .scope(action_event::queue_many(batch("kept")).on(&mut *tx))
        .await
        .expect("queue the batch in tx");
    assert_eq!(committed.len(), 100);
    assert_eq!(events_in(&w).await, 0, "not visible before the commit");
    tx.commit().await.expect("commit");
    assert_eq!(events_in(&w).await, 100, "committed: all");

    let mut poller = w.spawn("p.log", &["--queues", "medium"]);
    let records = w.wait_records(Duration::from_secs(60), "the 100 committed events", |r| {
        r.iter().filter(|r| r.what == "end").count() >= 100
    });
    stop(&mut poller, "poller");
    for i in 0..100 {
        assert_eq!(
            of_tag(&records, &format!("kept-{i}")).len(),
            2,
            "kept-{i}: start and end, once"
        );
    }
    assert!(
        records.iter().all(|r| !r.tag.starts_with("rolled")),
        "a rolled-back event ran"
    );
    assert_eq!(events_in(&w).await, 0);
}

/// `.on(..)` with a client on another backend is an error naming the
/// broker and the fix; nothing is queued anywhere.
#[tokio::test]
async fn on_with_another_backend_is_an_error() {
    if !postgres_available() {
        return;
    }
    let w = World::new(&Backend::Sqlite);
    let client = Client::connect(&w.url).await.expect("sqlite");
    let pool = sqlx::PgPool::connect(POSTGRES_URL).await.expect("pool");
    let mut tx = pool.begin().await.expect("begin");
    let err = client
        .scope(record("nope").send().on(&mut tx))
        .await
        .expect_err("not a PostgreSQL client");
    let msg = err.to_string();
    assert!(matches!(err, Error::Queue { .. }), "{err:?}");
    assert!(
        msg.contains("sqlite://") && msg.contains("postgres://"),
        "{msg}"
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(
        client
            .broker()
            .depth("medium")
            .await
            .expect("depth")
            .waiting,
        0
    );
}

/// The app commits, prints `committed`, and is killed with SIGKILL before
/// its next step: the event still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_killed_right_after_commit_event_still_runs() {
    if !postgres_available() {
        return;
    }
    let w = World::new(&Backend::Postgres);
    let mut app = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "postgres_tx_e2e::app_process",
            "--ignored",
            "--nocapture",
        ])
        .env("E2E_TX_APP_URL", &w.url)
        .env("E2E_TX_APP_TAG", "killed-app")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the app");
    let stdout = app.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let id = loop {
        let line = lines
            .next()
            .expect("the app printed `committed <id>` before exiting")
            .expect("read");
        if let Some(id) = line.strip_prefix("committed ") {
            break id.to_string();
        }
    };
    send_signal(&app, SIGKILL);
    let status = app.wait().expect("wait");
    assert!(!status.success(), "killed: {status:?}");

    let mut poller = w.spawn("p.log", &["--queues", "medium"]);
    let records = w.wait_records(
        Duration::from_secs(30),
        "the event of the killed app",
        |r| r.iter().any(|r| r.what == "end" && r.tag == "killed-app"),
    );
    stop(&mut poller, "poller");
    let ran = of_tag(&records, "killed-app");
    assert_eq!(ran.len(), 2, "start and end, once: {ran:?}");
    assert_eq!(ran[0].id, id);
}

/// Not a test: the app process of the test above (this binary run again
/// with `--ignored --exact postgres_tx_e2e::app_process`). Queues in a
/// transaction, commits, says so, then waits to be killed.
#[tokio::test]
#[ignore = "run by app_killed_right_after_commit_event_still_runs as its app process"]
async fn app_process() {
    let url = std::env::var("E2E_TX_APP_URL").expect("E2E_TX_APP_URL");
    let tag = std::env::var("E2E_TX_APP_TAG").expect("E2E_TX_APP_TAG");
    let client = Client::connect(&url).await.expect("client");
    let pool = sqlx::PgPool::connect(POSTGRES_URL).await.expect("pool");
    let mut tx = pool.begin().await.expect("begin");
    let id = client
        .scope(record(&tag).send().on(&mut tx))
        .await
        .expect("queue in tx");
    tx.commit().await.expect("commit");
    use std::io::Write;
    let mut out = std::io::stdout();
    writeln!(out, "committed {id}").expect("stdout");
    out.flush().expect("flush");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn schema_exists(c: &mut sqlx::PgConnection, schema: &str) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
    )
    .bind(schema)
    .fetch_one(c)
    .await
    .expect("query")
}

/// `poller migrate --print` prints the SQL and touches nothing; `poller
/// migrate` applies it once (a second run finds it up to date); the
/// printed SQL applied by hand makes a schema a broker with `migrate=off`
/// accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_migrate_applies_or_prints() {
    if !postgres_available() {
        return;
    }
    let w = World::new(&Backend::Postgres);
    let schema = w.schema().expect("schema");
    let printed = w.run_ok(&["migrate", "--print"]);
    assert!(
        printed.contains(&format!("CREATE TABLE {schema}.events")),
        "{printed}"
    );
    let mut c = sqlx::PgConnection::connect(POSTGRES_URL)
        .await
        .expect("connect");
    assert!(
        !schema_exists(&mut c, &schema).await,
        "--print touches nothing"
    );
    let out = w.run_ok(&["migrate"]);
    assert!(out.contains("applied migration 1"), "{out}");
    assert!(schema_exists(&mut c, &schema).await);
    let again = w.run_ok(&["migrate"]);
    assert!(!again.contains("applied"), "{again}");
    assert!(again.contains("schema up to date"), "{again}");

    // A team that applies the printed SQL itself, then opens with migrate=off.
    let other = format!("test_{}", uuid_like());
    let url = format!("{POSTGRES_URL}?schema={other}&migrate=off");
    let Err(err) = action_event::broker::connect(&url).await else {
        panic!("opened a schema that is not migrated, with migrate=off");
    };
    assert!(err.to_string().contains("poller migrate"), "{err}");
    let sql = action_event::broker::postgres::migration_sql(&other).expect("sql");
    sqlx::raw_sql(&sql)
        .execute(&mut c)
        .await
        .expect("apply by hand");
    let b = action_event::broker::connect(&url)
        .await
        .expect("migrated by hand");
    drop(b);
    drop_postgres_schema(&other);
}
