//! Shared by the end-to-end tests: a temp dir per test, the e2e poller
//! binary as real processes, the record file its events write, and the
//! backends every test runs against.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use action_event::{Client, EventId, QueueRequest};

pub const POLLER: &str = env!("CARGO_BIN_EXE_e2e_poller");
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A backend to run a test against.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Amqp,
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
    v
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
        };
        let record = dir.path().join("record.txt");
        World {
            dir,
            url,
            backend: backend.clone(),
            record,
        }
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
            .env("RUST_LOG", "info")
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
                    let req = QueueRequest::new("record")
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

pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGINT: i32 = 2;
