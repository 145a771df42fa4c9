//! `poller start` (and `poller` with no subcommand): runs a poller in the
//! foreground, or as a daemon with a PID file and a log file.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::logging::{self, LogFormat};
use super::parse_duration;
use crate::broker;
use crate::client::Client;
use crate::envelope::now_ms;
#[cfg(feature = "metrics")]
use crate::poller::MetricsEndpoint;
use crate::poller::pidfile::{self, PollerInfo};
use crate::poller::{DEFAULT_QUEUES, ExitReason, Poller, PollerConfig, RetryPolicy, Shutdown};
use crate::{Error, State, redact_url};

/// Set in the environment of the process a `--daemon` start spawns.
const DAEMON_CHILD_ENV: &str = "ACTION_EVENT_DAEMON_CHILD";

/// The flags of `start`, which `poller` with no subcommand takes too.
#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// Poller id: names its PID file `<pid-dir>/poller.<id>.pid`. Starting a
    /// poller with the id of a running one replaces it (the old one finishes
    /// its events in hand, then exits).
    #[arg(long)]
    pub(super) id: Option<String>,

    /// Run in the background, logging to --log-file.
    #[arg(short, long)]
    pub(super) daemon: bool,

    /// Queues to serve, highest priority first, e.g. "high medium".
    /// Default: high medium low, then any other queue an event names
    /// (in name order; the poller logs that order at start).
    #[arg(long)]
    pub(super) queues: Option<String>,

    /// Events run at once.
    #[arg(long, default_value_t = 1)]
    pub(super) concurrency: usize,

    /// Runtime threads: 1 runs the poller on one thread (a current-thread
    /// runtime: no hops between threads, the least CPU per event, but a
    /// handler that blocks its thread stalls every other event, the
    /// timeouts and the signals); N > 1 a multi-thread runtime with N
    /// workers. Default: a worker per CPU (tokio's default), which measured
    /// as fast or faster on a shared 2-core machine (see BENCHMARKS.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(super) threads: Option<u16>,

    /// Broker URL (default: $ACTION_EVENT_URL, else sqlite://action_event.db).
    #[arg(long)]
    pub(super) broker: Option<String>,

    /// Where PID files live (relative to the working directory).
    #[arg(long, default_value = "tmp/pids")]
    pub(super) pid_dir: PathBuf,

    /// Log file (daemon default: log/poller.<id>.log, relative to the
    /// working directory; foreground: stderr).
    #[arg(long)]
    pub(super) log_file: Option<PathBuf>,

    /// Log format: `human` keeps the original's lines; `json` is one object
    /// per line, with the event's span (event, id, queue, attempt) on every
    /// line logged while it runs. `RUST_LOG` sets the level (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub(super) log_format: LogFormat,

    /// Serve Prometheus metrics over HTTP at this address, e.g.
    /// 127.0.0.1:9187 (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    pub(super) metrics: Option<SocketAddr>,

    /// Exit once every queue is empty and nothing is in hand.
    #[arg(long)]
    pub(super) exit_when_empty: bool,

    /// On SIGTERM/SIGINT, how long events in hand may take before they are
    /// given back to their queue.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(super) shutdown_timeout: Duration,

    /// Wait after a first failure; doubles with each attempt.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(super) retry_base: Duration,

    /// Longest wait between attempts.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(super) retry_max: Duration,

    /// How many times an event whose name no handler of this poller knows is
    /// retried (with the same backoff) before it goes to the dead letters.
    #[arg(long, default_value_t = crate::registry::DEFAULT_RETRIES)]
    pub(super) unknown_retries: u32,
}

impl RunArgs {
    fn daemon_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| "0".to_string())
    }

    /// Where the log goes: `--log-file`, else `log/poller.<id>.log` for a
    /// daemon, else stderr (`None`).
    pub(super) fn log_file(&self) -> Option<PathBuf> {
        match (&self.log_file, self.daemon) {
            (Some(p), _) => Some(p.clone()),
            (None, true) => Some(PathBuf::from(format!(
                "log/poller.{}.log",
                self.daemon_id()
            ))),
            (None, false) => None,
        }
    }

    /// The queues to serve: `--queues` split at spaces and commas, else the
    /// default order (see [`default_queues`]).
    fn queues(&self) -> Result<Vec<String>, clap::Error> {
        match &self.queues {
            Some(q) => {
                let qs: Vec<String> = q
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if qs.is_empty() {
                    return Err(super::misuse(
                        &["start"],
                        "--queues names no queue: give at least one, e.g. --queues \"high medium low\"",
                    ));
                }
                Ok(qs)
            }
            None => Ok(default_queues(
                crate::registry().ok().map(|r| r.events().map(|e| e.queue)),
            )),
        }
    }
}

/// `high medium low`, then every other queue the events name, in name order.
fn default_queues<'a>(event_queues: Option<impl Iterator<Item = &'a str>>) -> Vec<String> {
    let mut qs: Vec<String> = DEFAULT_QUEUES.iter().map(|q| q.to_string()).collect();
    if let Some(names) = event_queues {
        let mut extra: Vec<String> = names
            .filter(|q| !qs.iter().any(|d| d == q))
            .map(str::to_string)
            .collect();
        extra.sort();
        extra.dedup();
        qs.extend(extra);
    }
    qs
}

/// What a poller says at start about its queues, from the (event, queue)
/// pairs of its binary and the queues it serves: a warning when the
/// default order placed custom queues after `low`, naming the order and
/// how to place them; a note when `--queues` leaves out queues its events
/// name.
fn queue_notes(
    events: &[(&str, &str)],
    served: &[String],
    explicit: bool,
) -> (Option<String>, Option<String>) {
    // queue -> its events, in name order.
    let mut by_queue: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (event, queue) in events {
        by_queue.entry(queue).or_default().push(event);
    }
    let describe = |queues: &[&str]| -> String {
        queues
            .iter()
            .map(|q| {
                let mut names = by_queue.get(q).cloned().unwrap_or_default();
                names.sort_unstable();
                let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                format!("`{q}` (event {})", names.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !explicit {
        let custom: Vec<&str> = by_queue
            .keys()
            .copied()
            .filter(|q| !DEFAULT_QUEUES.contains(q))
            .collect();
        if custom.is_empty() {
            return (None, None);
        }
        let mut suggested = custom.clone();
        suggested.extend(DEFAULT_QUEUES);
        let warn = format!(
            "Custom queue(s) {} come after `low`: this poller serves {}, highest first. To place them, give the whole order, e.g. --queues \"{}\"",
            describe(&custom),
            served.join(","),
            suggested.join(" ")
        );
        return (Some(warn), None);
    }
    let unserved: Vec<&str> = by_queue
        .keys()
        .copied()
        .filter(|q| !served.iter().any(|s| s == q))
        .collect();
    if unserved.is_empty() {
        return (None, None);
    }
    let info = format!(
        "Not serving {}: --queues \"{}\" leaves them to other pollers",
        describe(&unserved),
        served.join(" ")
    );
    (None, Some(info))
}

/// Runs `start`: spawns the daemon, or sets up the log and runs the poller
/// in this process until it stops.
pub(super) fn main(cli: RunArgs, args: &[OsString], state: State) -> ExitCode {
    #[cfg(not(feature = "metrics"))]
    if cli.metrics.is_some() {
        let message = format!(
            "--metrics needs action_event's \"metrics\" feature, which this build leaves out: in Cargo.toml, action_event = {{ version = \"{}\", features = [\"metrics\"] }}",
            env!("CARGO_PKG_VERSION")
        );
        return super::usage_exit(super::misuse(&["start"], message));
    }
    let queues = match cli.queues() {
        Ok(q) => q,
        Err(e) => return super::usage_exit(e),
    };
    if cli.daemon && std::env::var_os(DAEMON_CHILD_ENV).is_none() {
        return match spawn_daemon(&cli, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("poller: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let file = if std::env::var_os(DAEMON_CHILD_ENV).is_none() {
        cli.log_file()
    } else {
        None // the daemon's stderr is its log file already
    };
    if let Err(e) = logging::init(cli.log_format, file.as_deref()) {
        eprintln!("poller: {e}");
        return ExitCode::FAILURE;
    }
    crate::poller::log_panics();
    let runtime = match runtime(cli.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poller: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(start(&cli, queues, state));
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The log file's last lines (see `log_buffer`).
    super::log_buffer::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            // The log may be a file; say it where the user is looking too.
            eprintln!("poller: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The poller's runtime (`--threads`): current-thread for 1, multi-thread
/// with that many workers for more, tokio's default (a worker per CPU)
/// when not given.
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n.max(1)))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// Starts this same program again in the background, detached from the
/// terminal (its own session), logging to the log file; returns once the
/// child has written its PID file.
fn spawn_daemon(cli: &RunArgs, args: &[OsString]) -> Result<(), Error> {
    use std::os::unix::process::CommandExt as _;
    let id = cli.daemon_id();
    let log_path = cli
        .log_file()
        .unwrap_or_else(|| PathBuf::from(format!("log/poller.{id}.log")));
    let log = logging::open_log(&log_path)?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("cannot duplicate the log file handle", e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("cannot find this program", e))?;
    let mut child_args: Vec<OsString> = args
        .iter()
        .skip(1)
        .filter(|a| *a != "-d" && *a != "--daemon")
        .cloned()
        .collect();
    if cli.id.is_none() {
        child_args.push("--id".into());
        child_args.push(id.clone().into());
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&child_args)
        .env(DAEMON_CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe; it detaches the child from the
    // terminal's session so the shell's SIGHUP/SIGINT do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("cannot start the daemon", e))?;
    let pid_path = pidfile::pid_path(&cli.pid_dir, &id);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if pidfile::read_pid(&pid_path) == Some(child.id()) {
            println!(
                "poller {id} started (pid {}), logging to {}",
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Registry(format!(
                "the daemon exited at start ({status}); see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Registry(format!(
        "the daemon (pid {}) did not write {} within 30s; see {}",
        child.id(),
        pid_path.display(),
        log_path.display()
    )))
}

async fn start(cli: &RunArgs, queues: Vec<String>, state: State) -> Result<(), Error> {
    let registry = crate::registry()?;
    let url = broker::resolve_url(cli.broker.as_deref());
    let shutdown = Shutdown::new();
    spawn_signal_handler(shutdown.clone())?;
    let broker = connect_waiting(&url, &shutdown).await?;
    for q in &queues {
        if !registry.events().any(|e| e.queue == q) {
            tracing::debug!("No event of this binary defaults to queue `{q}`");
        }
    }
    let daemon_child = std::env::var_os(DAEMON_CHILD_ENV).is_some();
    let id = if cli.daemon || daemon_child {
        Some(cli.daemon_id())
    } else {
        cli.id.clone()
    };
    let pid_file = id.as_ref().map(|id| pidfile::pid_path(&cli.pid_dir, id));
    let me = std::process::id();
    let info = PollerInfo {
        id: id.clone().unwrap_or_else(|| "-".into()),
        pid: me,
        host: pidfile::hostname(),
        queues: queues.clone(),
        concurrency: cli.concurrency.max(1),
        broker: redact_url(&url),
        started_at_ms: now_ms(),
    };
    let config = PollerConfig {
        queues: queues.clone(),
        concurrency: cli.concurrency.max(1),
        exit_when_empty: cli.exit_when_empty,
        shutdown_timeout: cli.shutdown_timeout,
        retry: RetryPolicy {
            base: cli.retry_base,
            max: cli.retry_max,
            ..RetryPolicy::default()
        },
        unknown_retries: cli.unknown_retries,
        pid_file: pid_file.clone(),
        identity: Some(info.clone()),
        ..PollerConfig::default()
    };
    let poller = Poller::new(broker.clone(), state, config)?;
    #[cfg(feature = "metrics")]
    if let Some(addr) = cli.metrics {
        let endpoint = MetricsEndpoint {
            metrics: poller.metrics(),
            broker: broker.clone(),
            queues: queues.clone(),
            pid_dir: Some(cli.pid_dir.clone()),
        };
        serve_metrics(addr, endpoint).await?;
    }
    Client::from_broker(broker.clone()).set_global();
    tracing::info!(
        "Poller {} (pid {}) on {} with {} event(s)",
        id.as_deref().unwrap_or("-"),
        std::process::id(),
        broker.url(),
        registry.events().count()
    );
    for line in registry.describe().lines() {
        tracing::info!("  {line}");
    }
    let events: Vec<(&str, &str)> = registry.events().map(|e| (e.name, e.queue)).collect();
    let (warn, note) = queue_notes(&events, &queues, cli.queues.is_some());
    if let Some(line) = warn {
        tracing::warn!("{line}");
    }
    if let Some(line) = note {
        tracing::info!("{line}");
    }
    if id.is_some() {
        pidfile::claim(&cli.pid_dir, &info)?;
    }

    let summary = poller.run(shutdown).await;
    if let Some(id) = &id {
        let reason = summary.as_ref().ok().and_then(|s| s.exit.clone());
        if !matches!(reason, Some(ExitReason::HandedOver { .. })) {
            pidfile::release(&cli.pid_dir, id, me);
        }
    }
    let summary = summary?;
    tracing::info!(
        "Poller exiting: {} completed, {} halted, {} retried, {} dead, {} given back",
        summary.completed,
        summary.halted,
        summary.retried,
        summary.dead,
        summary.released
    );
    Ok(())
}

/// Binds the metrics address and serves it in the background. An address
/// in use is not fatal: during a handoff the poller being replaced still
/// holds it until it has finished its events, so this one warns and binds
/// as soon as the address is free. Any other bind error stops the start.
#[cfg(feature = "metrics")]
async fn serve_metrics(addr: SocketAddr, endpoint: MetricsEndpoint) -> Result<(), Error> {
    use tokio::net::TcpListener;
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!("Serving metrics on http://{addr}/metrics");
            tokio::spawn(endpoint.serve(listener));
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                "Metrics address {addr} is in use (by the poller this one replaces?); serving metrics once it is free"
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(listener) = TcpListener::bind(addr).await {
                        tracing::info!("Serving metrics on http://{addr}/metrics");
                        endpoint.serve(listener).await;
                        return;
                    }
                }
            });
            Ok(())
        }
        Err(e) => Err(Error::io(format!("cannot serve metrics on {addr}"), e)),
    }
}

/// Connects to the broker; a network broker (RabbitMQ) that does not answer
/// yet is waited for, with a logged error and backoff, so pollers started
/// before their broker (a reboot, a deploy) come up with it. A bad URL, or an
/// SQLite file that cannot be opened, is an error at once.
async fn connect_waiting(
    url: &str,
    shutdown: &Shutdown,
) -> Result<std::sync::Arc<dyn crate::broker::Broker>, Error> {
    let mut wait = Duration::from_millis(500);
    let mut stop = shutdown.subscribe();
    loop {
        match broker::connect(url).await {
            Ok(b) => return Ok(b),
            Err(e) if e.is_transient() => {
                tracing::error!(
                    "{e}; waiting for it, retrying in {}",
                    humantime::format_duration(wait)
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return Err(e),
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn spawn_signal_handler(shutdown: Shutdown) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::io("cannot listen for SIGTERM", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("cannot listen for SIGINT", e))?;
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            count += 1;
            if count == 1 {
                tracing::info!("{name}: taking no new events, finishing those in hand");
                shutdown.graceful();
            } else {
                tracing::warn!("{name} again: giving back events in hand and exiting now");
                shutdown.immediate();
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{default_queues, queue_notes};

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn custom_queues_in_the_default_order_are_a_warning_naming_the_order_and_the_fix() {
        let events = [
            ("hello_world", "high"),
            ("page_oncall", "urgent"),
            ("wake_up", "urgent"),
        ];
        let served = default_queues(Some(events.iter().map(|(_, q)| *q)));
        let (warn, info) = queue_notes(&events, &served, false);
        assert_eq!(
            warn.as_deref(),
            Some(
                "Custom queue(s) `urgent` (event `page_oncall`, `wake_up`) come after `low`: this poller serves high,medium,low,urgent, highest first. To place them, give the whole order, e.g. --queues \"urgent high medium low\""
            )
        );
        assert_eq!(info, None);
        // Only the standard queues: nothing to say.
        let events = [("hello_world", "high"), ("tick", "low")];
        assert_eq!(
            queue_notes(&events, &owned(&["high", "medium", "low"]), false),
            (None, None)
        );
    }

    #[test]
    fn queues_left_out_by_queues_are_named() {
        let events = [
            ("hello_world", "high"),
            ("page_oncall", "urgent"),
            ("tick", "medium"),
        ];
        let (warn, info) = queue_notes(&events, &owned(&["urgent", "medium"]), true);
        assert_eq!(warn, None);
        assert_eq!(
            info.as_deref(),
            Some(
                "Not serving `high` (event `hello_world`): --queues \"urgent medium\" leaves them to other pollers"
            )
        );
        let served = owned(&["urgent", "high", "medium", "low"]);
        assert_eq!(queue_notes(&events, &served, true), (None, None));
    }

    #[test]
    fn default_order_is_high_medium_low_then_other_queues_by_name() {
        let qs = default_queues(Some(
            ["low", "urgent", "mailers", "high", "urgent"].into_iter(),
        ));
        assert_eq!(qs, ["high", "medium", "low", "mailers", "urgent"]);
        assert_eq!(
            default_queues(None::<std::iter::Empty<&str>>),
            ["high", "medium", "low"]
        );
    }
}
