//! `cargo run --release -p action_event_bench -- [--backend sqlite|amqp|all] [--events N] [--quick]`
//!
//! Runs action_event and a hand-written baseline (rusqlite, lapin) doing the
//! same work on the same broker in the same run, prints one table, and
//! writes it to `BENCHMARKS.md` at the workspace root (`--quick` writes
//! `target/BENCHMARKS.quick.md` instead, so a smoke run never replaces the
//! recorded numbers). `--quick` uses small sizes and judges no timing: it
//! fails only when something does not work.
//!
//! Every throughput row also records each side's CPU per event, its own
//! and its broker's (`cpu.rs`), in a section of its own; `--compare`
//! prints that table again at the end of stdout.

mod amqp;
mod child;
mod cpu;
mod event;
mod fw;
mod postgres;
mod quorum;
mod report;
mod sqlite;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::report::{Report, thousands};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Sqlite,
    Amqp,
    Postgres,
    All,
}

#[derive(Debug, Parser)]
#[command(
    name = "action_event_bench",
    about = "action_event against hand-written rusqlite/lapin baselines, same broker, same run"
)]
struct Args {
    /// Which broker's rows to run.
    #[arg(long, value_enum, default_value = "all")]
    backend: BackendArg,
    /// Events per enqueue/processing/memory/two-poller row (default 100000; --quick: 300).
    #[arg(long)]
    events: Option<u64>,
    /// Small sizes, a smoke run: checks that every row works, judges no timing.
    #[arg(long)]
    quick: bool,
    /// The RabbitMQ to use.
    #[arg(
        long,
        env = "ACTION_EVENT_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// The PostgreSQL to use (each row works in a schema of its own).
    #[arg(
        long,
        env = "ACTION_EVENT_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Where to write the markdown (default: BENCHMARKS.md at the workspace
    /// root; with --quick, target/BENCHMARKS.quick.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only the row groups named (comma-separated: enqueue, process, procs,
    /// latency, memory, scale, two, quorum, web), e.g. while working on one of
    /// them. `quorum` (quorum queues on private nodes and a 3-node cluster)
    /// runs only when named here.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How many times the enqueue and processing rows run; each side's best
    /// run is shown (default 3; --quick: 1).
    #[arg(long)]
    reps: Option<usize>,
    /// After the run, print the "CPU per event, each side" table again, on
    /// its own at the end of stdout: for every throughput row, µs of CPU
    /// per event of the client (this process, or a side's own process) and
    /// of the broker (the RabbitMQ node's beam.smp, all postgres processes;
    /// SQLite: in process), for action_event and for the baseline. The
    /// table is measured on every run and is always in the report.
    #[arg(long)]
    compare: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: one measured process (memory rows, two pollers).
    #[command(name = "__child", hide = true)]
    Child(child::ChildArgs),
    /// Internal, for profiling a child: puts `events` no-op events in
    /// `medium` of a new SQLite broker file (`--path`), of a RabbitMQ
    /// framework URL (`--url`), or raw into one RabbitMQ queue (`--url`
    /// and `--queue`).
    #[command(name = "__fill", hide = true)]
    Fill {
        #[arg(long, conflicts_with = "url")]
        path: Option<PathBuf>,
        #[arg(long, required_unless_present = "path")]
        url: Option<String>,
        #[arg(long, requires = "url")]
        queue: Option<String>,
        #[arg(long)]
        events: u64,
    },
}

/// Sizes and settings of one run.
pub struct Plan {
    pub quick: bool,
    pub only: Vec<String>,
    pub reps: usize,
    pub n: u64,
    pub enqueue_tasks: u64,
    pub concurrencies: [usize; 3],
    pub latency_rate: u64,
    pub latency_secs: f64,
    pub latency_concurrency: usize,
    pub idle: Duration,
    pub scale_sizes: Vec<u64>,
    pub scale_sample: u64,
    /// The longest any one run may take.
    pub limit: Duration,
    pub exe: PathBuf,
    pub amqp_url: String,
    pub postgres_url: String,
    pub run_id: String,
}

impl Plan {
    /// Whether the row group `group` runs (`--only`).
    pub fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == group)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // With RUST_LOG set, the library's log goes to stderr (e.g.
    // `RUST_LOG=action_event=debug` shows publishes sent again); without
    // it nothing is installed, so the rows measure no logging.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    match args.cmd {
        Some(Cmd::Child(c)) => return child::main(c),
        Some(Cmd::Fill {
            path: Some(path),
            events,
            ..
        }) => return fill(&path, events),
        Some(Cmd::Fill {
            url: Some(url),
            queue,
            events,
            ..
        }) => return amqp::fill_main(&url, queue.as_deref(), events),
        Some(Cmd::Fill { .. }) => {
            eprintln!("action_event_bench __fill: give --path or --url");
            return ExitCode::FAILURE;
        }
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("action_event_bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

fn fill(path: &std::path::Path, events: u64) -> ExitCode {
    let db = sqlite::Db {
        path: path.to_path_buf(),
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(db.create()))
        .and_then(|()| sqlite::bulk_fill(path, 0, events));
    std::mem::forget(db); // keep the file
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("action_event_bench __fill: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let quick = args.quick;
    let n = args
        .events
        .unwrap_or(if quick { 300 } else { 100_000 })
        .max(1);
    let (scale_sizes, scale_sample) = if quick {
        (vec![300, 1_000, 3_000], 100)
    } else {
        (vec![10_000, 100_000, 1_000_000], 5_000)
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("action_event_bench: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = Plan {
        quick,
        only: args.only.clone(),
        reps: args.reps.unwrap_or(if quick { 1 } else { 3 }).max(1),
        n,
        enqueue_tasks: 64,
        concurrencies: [1, 8, 64],
        latency_rate: 1_000,
        latency_secs: if quick { 0.5 } else { 10.0 },
        latency_concurrency: 8,
        idle: Duration::from_millis(if quick { 300 } else { 2_000 }),
        scale_sizes,
        scale_sample,
        limit: Duration::from_secs(if quick { 120 } else { 1_800 }),
        exe,
        amqp_url: args.amqp_url.clone(),
        postgres_url: args.postgres_url.clone(),
        run_id: format!(
            "{:x}{:x}",
            action_event::envelope::now_ms() % 0xff_ffff,
            std::process::id()
        ),
    };
    let want_sqlite = matches!(args.backend, BackendArg::Sqlite | BackendArg::All);
    let want_amqp = matches!(args.backend, BackendArg::Amqp | BackendArg::All);
    let want_postgres = matches!(args.backend, BackendArg::Postgres | BackendArg::All);
    let require_postgres = args.backend == BackendArg::Postgres
        || std::env::var("ACTION_EVENT_REQUIRE_POSTGRES").as_deref() == Ok("1");
    let postgres_up = if want_postgres {
        match postgres::available(&args.postgres_url).await {
            Ok(()) => Ok(()),
            Err(reason) if require_postgres => {
                eprintln!("action_event_bench: {reason} (required)");
                return ExitCode::FAILURE;
            }
            Err(reason) => Err(reason),
        }
    } else {
        Ok(())
    };
    let require_amqp = args.backend == BackendArg::Amqp
        || std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() == Ok("1");

    // Decide about RabbitMQ before spending minutes on SQLite.
    let amqp = if want_amqp {
        let a = amqp::availability(&plan).await;
        match &a {
            amqp::Availability::Down(reason) if require_amqp => {
                eprintln!(
                    "action_event_bench: {reason} (required: {})",
                    if args.backend == BackendArg::Amqp {
                        "--backend amqp"
                    } else {
                        "ACTION_EVENT_REQUIRE_AMQP=1"
                    }
                );
                return ExitCode::FAILURE;
            }
            amqp::Availability::Up {
                fw_skip: Some(reason),
            } if args.backend == BackendArg::Amqp => {
                eprintln!(
                    "action_event_bench: --backend amqp: {reason}.\n  The RabbitMQ backend \
                     (action_event/src/broker/amqp/, the \"amqp\" feature) is not in this build. Use `--backend all` \
                     to run the lapin baselines with the action_event cells skipped."
                );
                return ExitCode::from(2);
            }
            _ => {}
        }
        Some(a)
    } else {
        None
    };
    let rabbit_up = matches!(amqp, Some(amqp::Availability::Up { .. }));

    let mut command = String::from("cargo run --release -p action_event_bench --");
    for a in std::env::args().skip(1) {
        command.push(' ');
        command.push_str(&a);
    }
    let mut report = Report {
        quick,
        command,
        header: report::header(rabbit_up),
        rows: Vec::new(),
        notes: Vec::new(),
        errors: 0,
        cpu: cpu::Table::default(),
    };
    report.header.push((
        "N".into(),
        format!(
            "{} events per enqueue, processing, memory and two-poller row; latency {}/s for {} s; \
         scale rows {} waiting, {} processed each",
            thousands(n),
            plan.latency_rate,
            plan.latency_secs,
            plan.scale_sizes
                .iter()
                .map(|s| thousands(*s))
                .collect::<Vec<_>>()
                .join(" / "),
            thousands(plan.scale_sample)
        ),
    ));
    eprintln!(
        "action_event_bench: N = {}{}",
        thousands(n),
        if quick { " (--quick)" } else { "" }
    );

    if want_sqlite && let Err(e) = sqlite::rows(&plan, &mut report).await {
        let mut r = report::Row::new("sqlite", "SQLite rows");
        r.status = Some(format!("error: {e:#}"));
        report.push(r);
    }
    if want_sqlite
        && plan.wants("web")
        && let Err(e) = web::rows(&plan, &mut report).await
    {
        let mut r = report::Row::new("sqlite", "Dashboard rows");
        r.status = Some(format!("error: {e:#}"));
        report.push(r);
    }
    match amqp {
        None => {}
        Some(amqp::Availability::Down(reason)) => {
            report.skip("rabbitmq", "All RabbitMQ rows", String::new(), &reason);
        }
        Some(amqp::Availability::Up { fw_skip }) => {
            if let Some(reason) = &fw_skip {
                report.notes.push(format!(
                    "RabbitMQ: the action_event cells are skipped ({reason}); the lapin baselines \
                     ran. They run once the \"amqp\" feature is on: the rows call \
                     `action_event::broker::connect(\"amqp://...?prefix=bench.<run>.<row>.\")`."
                ));
            }
            let fw_ran = fw_skip.is_none();
            if let Err(e) = amqp::rows(&plan, &mut report, fw_skip).await {
                let mut r = report::Row::new("rabbitmq", "RabbitMQ rows");
                r.status = Some(format!("error: {e:#}"));
                report.push(r);
            }
            if fw_ran && plan.wants("web") {
                web::rows_amqp(&plan, &mut report).await;
            }
        }
    }
    if quorum::wanted(&plan) {
        quorum::rows(&plan, &mut report).await;
    }
    if want_postgres {
        match postgres_up {
            Ok(()) => {
                if let Err(e) = postgres::rows(&plan, &mut report).await {
                    let mut r = report::Row::new("postgres", "PostgreSQL rows");
                    r.status = Some(format!("error: {e:#}"));
                    report.push(r);
                }
                report.notes.push(
                    "PostgreSQL baselines: a sqlx pool of 10 connections (the broker's default \
                     `pool`) on the same database, on tables the broker created; enqueue = one \
                     INSERT per event from 64 tasks, bulk = one `INSERT .. SELECT * FROM UNNEST(..)` \
                     per 1,000 events; drain = per task: `UPDATE .. WHERE id = (SELECT .. FOR UPDATE \
                     SKIP LOCKED) RETURNING` on high, medium, low in turn, decode, DELETE by id and \
                     claim. Idle CPU counts this process only (4 brokers, their LISTEN and \
                     heartbeat), not the PostgreSQL server's."
                        .into(),
                );
            }
            Err(reason) => report.skip("postgres", "All PostgreSQL rows", String::new(), &reason),
        }
    }
    report.notes.extend(notes(&plan));

    let md = report.markdown();
    println!("{md}");
    if args.compare {
        if report.cpu.is_empty() {
            println!("(--compare: no throughput row ran, no CPU to compare)");
        } else {
            println!("{}", report.cpu.markdown());
        }
    }
    let out = args.out.unwrap_or_else(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().map(PathBuf::from).unwrap_or(manifest);
        if quick {
            root.join("target").join("BENCHMARKS.quick.md")
        } else {
            root.join("BENCHMARKS.md")
        }
    });
    if let Some(parent) = out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&out, &md) {
        Ok(()) => eprintln!("action_event_bench: wrote {}", out.display()),
        Err(e) => {
            eprintln!("action_event_bench: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    if report.errors > 0 {
        eprintln!("action_event_bench: {} row(s) failed", report.errors);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn notes(plan: &Plan) -> Vec<String> {
    vec![
        format!(
            "The event is `bench_noop` (`#[action_event]` in this crate, handler does nothing but \
             count); bodies are the envelopes `queue!` writes, and the baselines store/publish the \
             same bytes (built before their timer starts) and decode them with serde_json. \
             Backlogs are all in `medium`; pollers serve `high medium low`, so every take looks at \
             the empty `high` first; the raw SQLite loop does the same."
        ),
        format!(
            "Enqueue, processing and scale rows run {} time(s), the baseline \
         and action_event taking turns; each side's best run is shown (the box is shared, and a \
         slow run is mostly other load; RabbitMQ drains also swing between a fast and a slow \
         mode, about 2x apart, on both sides). RabbitMQ backlogs get a 2 s pause between \
         filling and draining, on both sides. The RabbitMQ latency row runs as often, each \
         side's run with the lowest p99 shown.",
            plan.reps
        ),
        "Throughput rows: the ratio is action_event ÷ baseline events/s (higher is better); \
         latency rows: action_event p99 ÷ baseline p99; memory rows: action_event VmHWM ÷ baseline \
         VmHWM (lower is better); per-event cost rows: action_event µs ÷ baseline µs (lower is \
         better). Processing time runs from `Poller::run` to the start of the N-th event (the \
         poller's final 100 ms look at the empty queues is not counted; that all N were acked \
         is checked after it returns); the baselines stop after their N-th delete/ack."
            .into(),
        format!(
            "SQLite baselines: one rusqlite connection on a file created by the broker itself \
             (same table and index), WAL, synchronous=NORMAL; enqueue = one autocommit INSERT per \
             row; processing = `BEGIN IMMEDIATE`, SELECT first ready row per queue, UPDATE claim + \
             lease, COMMIT, decode, DELETE by id and claim. The latency baseline polls every {:?} \
             when nothing is ready (the broker's first poll interval).",
            sqlite::RAW_POLL
        ),
        format!(
            "RabbitMQ baselines: separate publish and consume connections; the enqueue \
             baseline publishes persistent messages with every confirm in flight (all N \
             published before the first confirm is awaited; backlogs for the drain rows are \
             filled with {} in flight); the consumer has prefetch {} and acks in a spawned task. \
             The pollers' URLs set `prefetch={}` too (the default is 32). The rows \"in own \
             processes\" run each side as a child process: the raw consumer on a \
             current-thread or a multi-thread tokio runtime, the poller through \
             `poller::main_with_args` (the poller binary's path: `--threads` picks its \
             runtime, its default INFO log goes to a file, checked to hold a `Finished \
             processing` line per event); their CPU is user + system of that process per \
             event (/proc/self/stat); the broker's is in the CPU section.",
            amqp::WINDOW,
            amqp::PREFETCH,
            amqp::PREFETCH
        ),
        format!(
            "Memory rows run the bench binary again as a child process (hidden `__child` \
             subcommand) and read VmHWM/VmRSS from /proc/self/status at its end; the two-poller \
             row starts {} poller processes together and checks that the events completed add up \
             to N (each event ran once).",
            2
        ),
        "CPU per event, each side (the last section; `--compare` prints it again at the end \
         of stdout): always measured, a reading is a few /proc files (PostgreSQL: a scan of \
         /proc, ~3 ms), taken outside the clocks. The `beam.smp` is the one holding the socket \
         listening on the URL's port; PostgreSQL's sum keeps the CPU of backends that exited \
         (the postmaster's reaped-children times). The in-process drains' span also holds the \
         poller's start and its last look at the empty queues (its rate stops at the N-th \
         event)."
            .into(),
        "In-process rows install no tracing subscriber: the poller's per-event log lines cost \
         nothing there; the RabbitMQ rows \"in own processes\" write the default INFO log to \
         a file, as a deployed poller does."
            .into(),
        format!(
            "Numbers are noisy: {} shares its CPUs with the broker and with other work; compare \
             ratios, not absolute rates.",
            if plan.quick {
                "a smoke run"
            } else {
                "this machine"
            }
        ),
    ]
}
