//! Child processes: the bench binary run again with a hidden subcommand, so
//! that memory is measured per process and two pollers really are two
//! processes. A child connects, prints `READY`, waits for `go` on stdin,
//! runs, and prints `RESULT done=.. elapsed_us=.. hwm_kb=.. rss_kb=..`.

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use action_event::State;
use action_event::poller::{Poller, PollerConfig, Shutdown};
use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::Plan;
use crate::cpu::{Cpu, Meter, Server};
use crate::event::{Probe, cpu_time, rss_kb};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The library poller (concurrency from `--concurrency`).
    Fw,
    /// The hand-written rusqlite loop.
    RawSqlite,
    /// The same rusqlite loop driven from a Tokio runtime built like `fw`'s
    /// (each poll on the blocking pool, a Tokio sleep between polls): what
    /// an async app's own loop costs. No bench row uses it; it tells how
    /// much of `fw`'s idle RSS is the async runtime itself.
    RawSqliteTokio,
    /// The hand-written lapin consumer.
    RawAmqp,
    /// The poller as an app's binary runs it (`poller::main_with_args`:
    /// its runtime from `--threads`, its INFO log to `--log-file`), on the
    /// queues `high medium low`; `--events` is the count it must reach.
    Poller,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Sit on empty queues for `--idle-ms`.
    Idle,
    /// Process until the queues are empty (raw-amqp: `--events` messages).
    Drain,
}

/// The hidden `__child` subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct ChildArgs {
    #[arg(long, value_enum)]
    kind: Kind,
    /// Broker URL (fw, raw-amqp) or database path (raw-sqlite).
    #[arg(long)]
    target: String,
    /// The queue (raw-amqp).
    #[arg(long, default_value = "")]
    queue: String,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 0)]
    events: u64,
    #[arg(long, default_value_t = 2000)]
    idle_ms: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Runtime threads (raw-amqp, poller): 1 = a current-thread runtime.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The poller's log file (poller).
    #[arg(long)]
    log_file: Option<String>,
}

/// The arguments of one child.
pub struct ChildSpec(Vec<String>);

impl ChildSpec {
    fn new(kind: &str, target: &str, mode: &str, events: u64, idle_ms: &str) -> ChildSpec {
        ChildSpec(
            [
                "__child", "--kind", kind, "--target", target, "--mode", mode, "--events",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([events.to_string(), "--idle-ms".into(), idle_ms.into()])
            .collect(),
        )
    }
    pub fn fw(url: &str, mode: &str, events: u64, idle_ms: &str) -> ChildSpec {
        Self::new("fw", url, mode, events, idle_ms)
    }
    pub fn raw_sqlite(path: &Path, mode: &str, events: u64, idle_ms: &str) -> ChildSpec {
        Self::new(
            "raw-sqlite",
            &path.display().to_string(),
            mode,
            events,
            idle_ms,
        )
    }
    pub fn raw_amqp(url: &str, queue: &str, mode: &str, events: u64, idle_ms: &str) -> ChildSpec {
        let mut s = Self::new("raw-amqp", url, mode, events, idle_ms);
        s.0.extend(["--queue".into(), queue.into()]);
        s
    }
    /// The poller binary's own path draining `events`, INFO log to `log`.
    pub fn poller(url: &str, events: u64, concurrency: usize, log: &Path) -> ChildSpec {
        let mut s = Self::new("poller", url, "drain", events, "0");
        s.0.extend([
            "--concurrency".into(),
            concurrency.to_string(),
            "--log-file".into(),
            log.display().to_string(),
        ]);
        s
    }
    /// Runs the child's runtime on `threads` threads (1: current-thread).
    pub fn threads(mut self, threads: usize) -> ChildSpec {
        self.0.extend(["--threads".into(), threads.to_string()]);
        self
    }
}

/// What a child reported.
#[derive(Debug, Default)]
pub struct ChildResult {
    pub done: u64,
    pub elapsed: Duration,
    pub hwm_kb: u64,
    pub rss_kb: u64,
    /// CPU time (user + system) of the whole child.
    pub cpu: Duration,
}

pub async fn run_one(plan: &Plan, spec: ChildSpec) -> anyhow::Result<ChildResult> {
    let (_, mut r) = run_many(plan, vec![spec]).await?;
    r.pop().context("no result")
}

/// [`run_one`] of a child that runs `n` events, with its CPU per event:
/// the child's own (its whole life) and `server`'s from `go` to its exit.
pub async fn run_metered(
    plan: &Plan,
    spec: ChildSpec,
    server: &Server,
    n: u64,
) -> anyhow::Result<(ChildResult, Cpu)> {
    let (_, mut r, cpu) = run_inner(plan, vec![spec], Some((server, n))).await?;
    Ok((r.pop().context("no result")?, cpu.context("no CPU")?))
}

/// Starts every child, waits until all are ready, starts them together and
/// waits for all. Returns the wall time from `go` to the last exit.
pub async fn run_many(
    plan: &Plan,
    specs: Vec<ChildSpec>,
) -> anyhow::Result<(Duration, Vec<ChildResult>)> {
    let (elapsed, results, _) = run_inner(plan, specs, None).await?;
    Ok((elapsed, results))
}

/// [`run_many`], reading `meter`'s server (and the children's CPU) per
/// event of the `n` they run, when given.
async fn run_inner(
    plan: &Plan,
    specs: Vec<ChildSpec>,
    meter: Option<(&Server, u64)>,
) -> anyhow::Result<(Duration, Vec<ChildResult>, Option<Cpu>)> {
    let mut children = Vec::new();
    for spec in specs {
        let mut child = tokio::process::Command::new(&plan.exe)
            .args(&spec.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a child process")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        children.push((child, stdout.lines()));
    }
    let limit = plan.limit;
    let run = async {
        for (_, lines) in children.iter_mut() {
            let line = lines.next_line().await?.unwrap_or_default();
            ensure!(line == "READY", "child said `{line}` instead of READY");
        }
        let running = meter.map(|(server, n)| (Meter::start(server), n));
        let started = Instant::now();
        for (child, _) in children.iter_mut() {
            let mut stdin = child.stdin.take().context("child stdin")?;
            stdin.write_all(b"go\n").await?;
        }
        let mut results = Vec::new();
        for (child, lines) in children.iter_mut() {
            let mut result = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("RESULT ") {
                    result = Some(parse(rest)?);
                }
            }
            let status = child.wait().await?;
            ensure!(status.success(), "child exited with {status}");
            results.push(result.context("child printed no RESULT")?);
        }
        let elapsed = started.elapsed();
        let cpu = running.map(|(m, n)| m.stop_child(n, results.iter().map(|r| r.cpu).sum()));
        Ok((elapsed, results, cpu))
    };
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => bail!("child processes did not finish within {limit:?}"),
    }
}

fn parse(rest: &str) -> anyhow::Result<ChildResult> {
    let mut r = ChildResult::default();
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=').context("bad RESULT")?;
        let v: u64 = v.parse()?;
        match k {
            "done" => r.done = v,
            "elapsed_us" => r.elapsed = Duration::from_micros(v),
            "hwm_kb" => r.hwm_kb = v,
            "rss_kb" => r.rss_kb = v,
            "cpu_ms" => r.cpu = Duration::from_millis(v),
            _ => {}
        }
    }
    Ok(r)
}

/// The child's `main`.
pub fn main(args: ChildArgs) -> ExitCode {
    match run(&args) {
        Ok((done, elapsed)) => {
            let (hwm, rss) = rss_kb();
            println!(
                "RESULT done={done} elapsed_us={} hwm_kb={hwm} rss_kb={rss} cpu_ms={}",
                elapsed.as_micros(),
                cpu_time().as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("action_event_bench child ({:?}): {e:#}", args.kind);
            ExitCode::FAILURE
        }
    }
}

fn ready_go() -> anyhow::Result<()> {
    println!("READY");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    ensure!(line.trim() == "go", "expected `go`, got `{}`", line.trim());
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(0)
}

/// `threads` 1: a current-thread runtime; 0: tokio's default multi-thread
/// one (a worker per CPU); N: multi-thread with N workers.
fn runtime_with(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    Ok(b.enable_all().build()?)
}

fn run(a: &ChildArgs) -> anyhow::Result<(u64, Duration)> {
    let idle = Duration::from_millis(a.idle_ms);
    match a.kind {
        Kind::Fw => {
            let rt = runtime()?;
            let broker = rt.block_on(action_event::broker::connect(&a.target))?;
            let stop = Shutdown::new();
            let probe = Probe::new(0, None);
            let config = PollerConfig {
                concurrency: a.concurrency,
                exit_when_empty: a.mode == Mode::Drain,
                ..PollerConfig::default()
            };
            let poller = Poller::new(broker, State::new().with(probe), config)?;
            ready_go()?;
            let started = Instant::now();
            let summary = rt.block_on(async {
                if a.mode == Mode::Idle {
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(idle).await;
                        stop.graceful();
                    });
                }
                poller.run(stop).await
            })?;
            Ok((summary.completed, started.elapsed()))
        }
        Kind::RawSqlite => {
            let mut conn = crate::sqlite::raw_conn(Path::new(&a.target))?;
            ready_go()?;
            let started = Instant::now();
            let done = match a.mode {
                Mode::Drain => crate::sqlite::raw_drain(&mut conn, None, |_| {})?,
                Mode::Idle => {
                    crate::sqlite::raw_idle(&mut conn, idle)?;
                    0
                }
            };
            Ok((done, started.elapsed()))
        }
        Kind::RawSqliteTokio => {
            let rt = runtime()?;
            let path = std::path::PathBuf::from(&a.target);
            let conn = rt.block_on(crate::sqlite::blocking(move || {
                crate::sqlite::raw_conn(&path)
            }))?;
            ready_go()?;
            let started = Instant::now();
            rt.block_on(crate::sqlite::raw_idle_async(conn, idle))?;
            Ok((0, started.elapsed()))
        }
        Kind::Poller => {
            let probe = Probe::new(a.events, None);
            let mut args = vec![
                "poller".to_string(),
                "--broker".into(),
                a.target.clone(),
                "--queues".into(),
                "high medium low".into(),
                "--concurrency".into(),
                a.concurrency.to_string(),
                "--exit-when-empty".into(),
            ];
            if a.threads > 0 {
                args.extend(["--threads".into(), a.threads.to_string()]);
            }
            if let Some(log) = &a.log_file {
                args.extend(["--log-file".into(), log.clone()]);
            }
            ready_go()?;
            let started = Instant::now();
            let code = action_event::poller::main_with_args(args, State::new().with(probe.clone()));
            ensure!(code == ExitCode::SUCCESS, "the poller exited with {code:?}");
            let reached = probe.reached().with_context(|| {
                format!("the poller ran {} of {} events", probe.done(), a.events)
            })?;
            Ok((probe.done(), reached.duration_since(started)))
        }
        Kind::RawAmqp => {
            let rt = runtime_with(a.threads)?;
            let conn = rt.block_on(crate::amqp::raw_connect(&a.target, "bench-raw-child"))?;
            ready_go()?;
            let started = Instant::now();
            let done = rt.block_on(async {
                match a.mode {
                    Mode::Drain => crate::amqp::raw_consume(&conn, &a.queue, a.events, None)
                        .await
                        .map(|_| a.events),
                    Mode::Idle => crate::amqp::raw_idle(&conn, &a.queue, idle)
                        .await
                        .map(|_| 0),
                }
            })?;
            Ok((done, started.elapsed()))
        }
    }
}
