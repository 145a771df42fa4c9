//! Shared by the end-to-end tests: a temp dir per test, the e2e poller
//! binary as real processes, the record file its events write, and the
//! backends every test runs against.
#![allow(dead_code)]

/// Tests that measure latency, and those that load both cores (thousands of
/// events), never run at the same time: they share one test binary
/// (`tests/e2e`), whose tests run in parallel.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use action_event::broker::{DeadEvent, DeadFilter};
use action_event::{Client, EventId, QueueRequest};

pub const POLLER: &str = env!("CARGO_BIN_EXE_e2e_poller");
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A backend to run a test against.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Amqp,
    Postgres,
}

/// The backends this machine offers: SQLite always; RabbitMQ when it
/// answers (or a loud failure when `ACTION_EVENT_REQUIRE_AMQP=1`).
///
/// `ACTION_EVENT_TEST_BACKENDS=sqlite` (or `amqp`) narrows it, for a quick
/// local run; CI never sets it.
pub fn backends() -> Vec<Backend> {
    let only = std::env::var("ACTION_EVENT_TEST_BACKENDS").unwrap_or_default();
    let mut v = Vec::new();
    if only.is_empty() || only.contains("sqlite") {
        v.push(Backend::Sqlite);
    }
    if (only.is_empty() || only.contains("amqp")) && amqp_available() {
        v.push(Backend::Amqp);
    }
    if (only.is_empty() || only.contains("postgres")) && postgres_available() {
        v.push(Backend::Postgres);
    }
    v
}

/// The shared PostgreSQL the tests use (trust auth, database `test`).
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Whether PostgreSQL answers on 127.0.0.1:5432; loud when it does not
/// (a failure when `ACTION_EVENT_REQUIRE_POSTGRES=1`).
pub fn postgres_available() -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().expect("address"),
        Duration::from_secs(2),
    )
    .is_ok();
    if !up {
        if std::env::var("ACTION_EVENT_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("no PostgreSQL at 127.0.0.1:5432 and ACTION_EVENT_REQUIRE_POSTGRES=1");
        }
        eprintln!(
            "SKIPPED: no PostgreSQL at 127.0.0.1:5432: the PostgreSQL part of this test did not run"
        );
    }
    up
}

/// Drops a test's PostgreSQL schema, from any context (a `Drop`, inside or
/// outside a runtime): on a thread of its own with a runtime of its own.
pub fn drop_postgres_schema(schema: &str) {
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use action_event::sqlx::Connection;
            if let Ok(mut c) = action_event::sqlx::PgConnection::connect(POSTGRES_URL).await {
                let _ = action_event::sqlx::query(&sql).execute(&mut c).await;
            }
        });
    })
    .join();
}

/// Whether RabbitMQ answers on 127.0.0.1:5672; loud when it does not.
pub fn amqp_available() -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5672".parse().expect("address"),
        Duration::from_secs(2),
    )
    .is_ok();
    if !up {
        if std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() == Ok("1") {
            panic!("no RabbitMQ at 127.0.0.1:5672 and ACTION_EVENT_REQUIRE_AMQP=1");
        }
        eprintln!(
            "SKIPPED: no RabbitMQ at 127.0.0.1:5672: the RabbitMQ half of this test did not run"
        );
    }
    up
}

/// One test's world: a temp dir (cwd of the pollers), a broker URL, a record file.
pub struct World {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub backend: Backend,
    pub record: PathBuf,
}

impl World {
    pub fn new(backend: &Backend) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match backend {
            Backend::Sqlite => format!(
                "sqlite://{}?lease=2s",
                dir.path().join("events.db").display()
            ),
            Backend::Amqp => format!("{AMQP_URL}?prefix=test.{}.", uuid_like()),
            Backend::Postgres => {
                format!("{POSTGRES_URL}?schema=test_{}&lease=2s&pool=4", uuid_like())
            }
        };
        let record = dir.path().join("record.txt");
        World {
            dir,
            url,
            backend: backend.clone(),
            record,
        }
    }

    /// A RabbitMQ world on the broker at `url` (e.g. a private node's),
    /// with a prefix of its own added to its query.
    pub fn amqp_at(url: &str) -> World {
        let mut w = World::new(&Backend::Amqp);
        let sep = if url.contains('?') { '&' } else { '?' };
        w.url = format!("{url}{sep}prefix=test.{}.", uuid_like());
        w
    }

    /// The PostgreSQL schema of this world (`None` on other backends).
    pub fn schema(&self) -> Option<String> {
        self.url
            .split("schema=")
            .nth(1)
            .and_then(|p| p.split('&').next())
            .map(str::to_string)
            .filter(|_| matches!(self.backend, Backend::Postgres))
    }

    /// The broker URL without its query (`prefix` and other options).
    pub fn base_url(&self) -> &str {
        self.url.split('?').next().unwrap_or(&self.url)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A poller command in this world (cwd = the temp dir).
    pub fn poller(&self, args: &[&str]) -> Command {
        let mut c = Command::new(POLLER);
        c.args(args)
            .current_dir(self.dir.path())
            .env("ACTION_EVENT_URL", &self.url)
            .env("E2E_RECORD", &self.record)
            // `E2E_RUST_LOG=action_event=debug` while chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        c
    }

    /// Starts a poller whose stderr (the log) goes to `log` in the temp dir.
    pub fn spawn(&self, log: &str, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        let out = log.try_clone().expect("log handle");
        self.poller(args)
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn poller")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.poller(args).output().expect("run poller")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await.expect("connect")
    }

    /// Queues `n` `record` events on `queue`, tagged `<tag>-<i>`, from
    /// several tasks at once. Returns their ids.
    pub async fn queue_records(
        &self,
        n: usize,
        queue: &str,
        tag: &str,
        sleep_ms: u64,
    ) -> Vec<EventId> {
        let client = self.client().await;
        let mut set = tokio::task::JoinSet::new();
        let per = n.div_ceil(8);
        for t in 0..8 {
            let client = client.clone();
            let queue = queue.to_string();
            let tag = tag.to_string();
            set.spawn(async move {
                let mut ids = Vec::new();
                for i in (t * per)..((t + 1) * per).min(n) {
                    let req = QueueRequest::foreign("record")
                        .param("tag", format!("{tag}-{i}"))
                        .param("sleep_ms", sleep_ms)
                        .queue(&queue);
                    ids.push(client.send(req).await.expect("queue"));
                }
                ids
            });
        }
        let mut ids = Vec::new();
        while let Some(r) = set.join_next().await {
            ids.extend(r.expect("task"));
        }
        ids
    }

    /// Publishes `body` as is straight to `queue`, the way a foreign
    /// producer would, bypassing the envelope: for SQLite a raw row in the
    /// `events` table, for RabbitMQ a persistent message on the work queue
    /// `<prefix><queue>` on the default exchange (the RabbitMQ backend's
    /// naming; keep this in step with it).
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        // Opening the broker creates the schema / topology first.
        let _client = self.client().await;
        match self.backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(self.path().join("events.db"))
                    .expect("open the SQLite file");
                conn.busy_timeout(Duration::from_secs(10)).expect("busy");
                let now = action_event::envelope::now_ms() as i64;
                conn.execute(
                    "INSERT INTO events (event_id, queue, name, body, visible_at, queued_at) \
                     VALUES (?1, ?2, NULL, ?3, ?4, ?4)",
                    rusqlite::params![
                        format!("raw-{}", uuid_like()),
                        queue,
                        String::from_utf8_lossy(body),
                        now
                    ],
                )
                .expect("insert a raw row");
            }
            Backend::Postgres => {
                let schema = self.schema().expect("a schema");
                let mut c =
                    <action_event::sqlx::PgConnection as action_event::sqlx::Connection>::connect(
                        POSTGRES_URL,
                    )
                    .await
                    .expect("connect to PostgreSQL");
                let now = action_event::envelope::now_ms() as i64;
                action_event::sqlx::query(&format!(
                    "INSERT INTO {schema}.events (event_id, queue, name, body, visible_at, queued_at) \
                     VALUES ($1, $2, NULL, $3, $4, $4)"
                ))
                .bind(format!("raw-{}", uuid_like()))
                .bind(queue)
                .bind(String::from_utf8_lossy(body).into_owned())
                .bind(now)
                .execute(&mut c)
                .await
                .expect("insert a raw row");
            }
            Backend::Amqp => {
                use lapin::options::{
                    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
                };
                let prefix = self
                    .url
                    .split("prefix=")
                    .nth(1)
                    .and_then(|p| p.split('&').next())
                    .expect("the test URL has a prefix")
                    .to_string();
                let conn = lapin::Connection::connect(
                    self.base_url(),
                    lapin::ConnectionProperties::default(),
                )
                .await
                .expect("connect to RabbitMQ");
                let ch = conn.create_channel().await.expect("channel");
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .expect("confirms");
                let name = format!("{prefix}{queue}");
                ch.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("declare the work queue");
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        name.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        body,
                        lapin::BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish");
                confirm.await.expect("confirm");
                let _ = conn.close(200, "done".into()).await;
            }
        }
    }

    /// Every dead event, through `Broker::dead_list`.
    pub async fn dead(&self) -> Vec<DeadEvent> {
        self.client()
            .await
            .broker()
            .dead_list(&DeadFilter::default())
            .await
            .expect("dead_list")
    }

    /// Waits until `cond` holds on the dead letters, or panics after `limit`.
    pub async fn wait_dead(
        &self,
        limit: Duration,
        what: &str,
        cond: impl Fn(&[DeadEvent]) -> bool,
    ) -> Vec<DeadEvent> {
        let client = self.client().await;
        let started = Instant::now();
        loop {
            let d = client
                .broker()
                .dead_list(&DeadFilter::default())
                .await
                .expect("dead_list");
            if cond(&d) {
                return d;
            }
            if started.elapsed() > limit {
                panic!("timed out after {limit:?} waiting for {what}; dead letters: {d:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a poller command to its end; panics unless it exits 0. Returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "poller {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Opens the gate of the `gated` event with this tag: it succeeds from now on.
    pub fn open_gate(&self, tag: &str) {
        let dir = self.path().join("gates");
        std::fs::create_dir_all(&dir).expect("gates dir");
        std::fs::write(dir.join(tag), b"open").expect("gate");
    }

    /// Queues one event by name with JSON params on `queue`.
    pub async fn queue_json(&self, name: &str, queue: &str, params: serde_json::Value) -> EventId {
        self.client()
            .await
            .send(
                QueueRequest::foreign(name)
                    .params_value(params)
                    .queue(queue),
            )
            .await
            .expect("queue")
    }

    pub fn records(&self) -> Vec<Record> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(Record::parse)
            .collect()
    }

    /// Waits until `cond` holds on the records, or panics after `limit`.
    pub fn wait_records(
        &self,
        limit: Duration,
        what: &str,
        cond: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        let started = Instant::now();
        loop {
            let r = self.records();
            if cond(&r) {
                return r;
            }
            if started.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for {what}; {} records",
                    r.len()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One line the `record` event wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub what: String,
    pub id: String,
    pub tag: String,
    pub pid: u32,
    pub attempt: u32,
    pub ms: u64,
}

impl Record {
    fn parse(line: &str) -> Option<Record> {
        let mut it = line.split_whitespace();
        Some(Record {
            what: it.next()?.to_string(),
            id: it.next()?.to_string(),
            tag: it.next()?.to_string(),
            pid: it.next()?.parse().ok()?,
            attempt: it.next()?.parse().ok()?,
            ms: it.next()?.parse().ok()?,
        })
    }
}

/// The records of one tag, in the order written.
pub fn of_tag<'a>(records: &'a [Record], tag: &str) -> Vec<&'a Record> {
    records.iter().filter(|r| r.tag == tag).collect()
}

/// Whether a child process is still running.
pub fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

/// SIGTERM, then wait for a clean exit.
pub fn stop(child: &mut Child, what: &str) {
    if alive(child) {
        send_signal(child, SIGTERM);
    }
    let status = wait_child(child, Duration::from_secs(60), what);
    assert!(status.success(), "{what} exited with {status}");
}

/// How many `end` records each tag has.
pub fn ends_by_tag(records: &[Record]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in records.iter().filter(|r| r.what == "end") {
        *m.entry(r.tag.clone()).or_insert(0) += 1;
    }
    m
}

/// The queues of the `Processing <queue>:<id>` lines of a poller log, in order.
pub fn processing_order(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("Processing ")? + "Processing ".len()..];
            if rest.starts_with("queues:") {
                return None;
            }
            Some(rest.split(':').next()?.to_string())
        })
        .collect()
}

pub fn uuid_like() -> String {
    EventId::new().to_string().replace('-', "")
}

/// Waits for a child with a limit; kills it and panics on timeout.
pub fn wait_child(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn send_signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let r = unsafe { libc_kill(child.id() as i32, sig) };
    assert_eq!(r, 0, "kill failed");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which may hold spaces) start at `state`:
    // utime and stime are the 14th and 15th fields, so the 12th and 13th here.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGINT: i32 = 2;

/// Waits (at most 60 s) until a poller's log shows `needle`.
pub fn wait_log(w: &World, log: &str, needle: &str) {
    let started = std::time::Instant::now();
    while !w.log(log).contains(needle) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{log} never showed {needle:?}:\n{}",
            w.log(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for World {
    /// A PostgreSQL world's schema goes with it.
    fn drop(&mut self) {
        if let Some(schema) = self.schema() {
            drop_postgres_schema(&schema);
        }
    }
}
