//! The poller's command line (clap): `start` (the default), `stop`,
//! `status`, `queue`, `dead`, `generate`.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

#[cfg(feature = "metrics")]
use super::MetricsEndpoint;
use super::pidfile::{self, PollerInfo};
use super::{DEFAULT_QUEUES, ExitReason, Poller, PollerConfig, RetryPolicy, Shutdown};
use crate::broker::{self, DeadFilter};
use crate::client::{Client, QueueRequest};
use crate::envelope::now_ms;
use crate::{Error, State, redact_url};

const DAEMON_CHILD_ENV: &str = "ACTION_EVENT_DAEMON_CHILD";

/// The poller of an app: run it from your own binary so it links your events.
#[derive(Debug, Parser)]
#[command(
    name = "poller",
    about = "Runs the events of this app: takes them from the broker, highest priority queue first",
    after_help = "Examples:\n  poller                                   foreground, all queues, high first\n  poller --daemon --id 2 start             daemon with PID file tmp/pids/poller.2.pid\n  poller --id 2 --queues \"high medium\" start\n  poller --id 2 stop\n  poller status\n  poller queue hello_world name=world queue=high\n  poller dead list\n  poller --metrics 127.0.0.1:9187          Prometheus metrics at http://127.0.0.1:9187/metrics\n  poller generate event HelloWorld         writes src/events/hello_world.rs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Poller id: names its PID file `<pid-dir>/poller.<id>.pid`. Starting a
    /// poller with the id of a running one replaces it (the old one finishes
    /// its events in hand, then exits).
    #[arg(long, global = true)]
    id: Option<String>,

    /// Run in the background, logging to --log-file.
    #[arg(short, long, global = true)]
    daemon: bool,

    /// Queues to serve, highest priority first, e.g. "high medium".
    /// Default: high medium low, then any other queue an event names.
    #[arg(long, global = true)]
    queues: Option<String>,

    /// Events run at once.
    #[arg(long, global = true, default_value_t = 1)]
    concurrency: usize,

    /// Broker URL (default: $ACTION_EVENT_URL, else sqlite://action_event.db).
    #[arg(long, global = true)]
    broker: Option<String>,

    /// Where PID files live.
    #[arg(long, global = true, default_value = "tmp/pids")]
    pid_dir: PathBuf,

    /// Log file (daemon default: log/poller.<id>.log; foreground: stderr).
    #[arg(long, global = true)]
    log_file: Option<PathBuf>,

    /// Log format: `human` keeps the original's lines; `json` is one object
    /// per line, with the event's span (event, id, queue, attempt) on every
    /// line logged while it runs. `RUST_LOG` sets the level (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Serve Prometheus metrics over HTTP at this address, e.g.
    /// 127.0.0.1:9187 (GET /metrics).
    #[arg(long, global = true, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Exit once every queue is empty and nothing is in hand.
    #[arg(long, global = true)]
    exit_when_empty: bool,

    /// On SIGTERM/SIGINT, how long events in hand may take before they are
    /// given back to their queue.
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// Wait after a first failure; doubles with each attempt.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    retry_base: Duration,

    /// Longest wait between attempts.
    #[arg(long, global = true, default_value = "1h", value_parser = parse_duration)]
    retry_max: Duration,

    /// How many times an event whose name no handler of this poller knows is
    /// retried (with the same backoff) before it goes to the dead letters.
    #[arg(long, global = true, default_value_t = crate::registry::DEFAULT_RETRIES)]
    unknown_retries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Lines with a timestamp.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the poller (the default).
    Start,
    /// Stop the poller with --id (every poller of the PID dir without it):
    /// it finishes its events in hand and exits.
    Stop,
    /// List the pollers of this machine from their PID files; with a broker
    /// that offers it (RabbitMQ), also the live pollers of every machine.
    Status,
    /// Queue an event: `queue hello_world name=world [queue=high] [delay=30s]`.
    Queue {
        /// The event name.
        name: String,
        /// `key=value` params; a value that parses as JSON is JSON, else a
        /// string. `queue=` and `delay=` are reserved.
        params: Vec<String>,
    },
    /// Dead events: list, show, retry, purge.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Generate code in the Cargo project of the current directory.
    Generate {
        #[command(subcommand)]
        command: GenerateCommand,
    },
}

#[derive(Debug, Subcommand)]
enum GenerateCommand {
    /// An event: `generate event HelloWorld` writes src/events/hello_world.rs
    /// (struct HelloWorldEvent, event `hello_world`) and, if missing,
    /// src/events/mod.rs, src/events/application_event.rs and
    /// src/bin/poller.rs. Never overwrites a file.
    Event {
        /// The name in CamelCase, e.g. HelloWorld (`Event` is appended).
        name: String,
        /// The root of the Cargo project.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// List dead events, oldest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this event name.
        #[arg(long)]
        event: Option<String>,
    },
    /// Show one dead event with every error.
    Show {
        /// Its id.
        id: String,
    },
    /// Put dead events back on their queues with a fresh attempt count.
    Retry {
        /// One id.
        id: Option<String>,
        /// Every dead event (matching --queue/--event).
        #[arg(long)]
        all: bool,
        /// Only this queue (with --all).
        #[arg(long)]
        queue: Option<String>,
        /// Only this event name (with --all).
        #[arg(long)]
        event: Option<String>,
    },
    /// Delete dead events.
    Purge {
        /// One id.
        id: Option<String>,
        /// Every dead event (matching the other options).
        #[arg(long)]
        all: bool,
        /// Only those that died longer ago than this, e.g. 7d.
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this event name.
        #[arg(long)]
        event: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 500ms, 30s, 5m, 7d)"))
}

/// Runs the poller command line with the process's arguments. Call it from
/// the app's `src/bin/poller.rs`, which must link the app's events.
///
/// ```no_run
/// // src/bin/poller.rs
/// use my_app as _; // links the events (needed when they live in a library crate)
/// # mod my_app {}
/// fn main() -> std::process::ExitCode {
///     let state = action_event::State::new(); // the app's environment: pools, config
///     action_event::poller::main(state)
/// }
/// ```
pub fn main(state: State) -> ExitCode {
    main_with_args(std::env::args_os(), state)
}

/// [`main`] with explicit arguments (the first is the program name).
///
/// ```no_run
/// let code = action_event::poller::main_with_args(["poller", "status"], action_event::State::new());
/// ```
pub fn main_with_args<I, T>(args: I, state: State) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    #[cfg(not(feature = "metrics"))]
    if cli.metrics.is_some() {
        use clap::CommandFactory as _;
        let message = format!(
            "--metrics needs action_event's \"metrics\" feature, which this build leaves out: in Cargo.toml, action_event = {{ version = \"{}\", features = [\"metrics\"] }}",
            env!("CARGO_PKG_VERSION")
        );
        let _ = Cli::command()
            .error(clap::error::ErrorKind::InvalidValue, message)
            .print();
        return ExitCode::from(2);
    }
    if let Some(Command::Generate {
        command: GenerateCommand::Event { name, dir },
    }) = &cli.command
    {
        return generate(dir, name);
    }
    let is_start = matches!(cli.command, None | Some(Command::Start));
    if is_start && cli.daemon && std::env::var_os(DAEMON_CHILD_ENV).is_none() {
        return match spawn_daemon(&cli, &args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("poller: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = init_logging(&cli, is_start) {
        eprintln!("poller: {e}");
        return ExitCode::FAILURE;
    }
    if is_start {
        super::log_panics();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("poller: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match &cli.command {
            None | Some(Command::Start) => start(&cli, state).await,
            Some(Command::Stop) => stop(&cli),
            Some(Command::Status) => status(&cli).await,
            Some(Command::Queue { name, params }) => queue(&cli, name, params).await,
            Some(Command::Dead { command }) => dead(&cli, command).await,
            Some(Command::Generate { .. }) => Ok(()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            if is_start {
                // The log may be a file; say it where the user is looking too.
                eprintln!("poller: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn generate(dir: &Path, name: &str) -> ExitCode {
    match super::generate::generate_event(dir, name) {
        Ok(actions) => {
            for a in &actions {
                println!("{a}");
            }
            if let Ok(names) = super::EventNames::parse(name) {
                for note in super::generate::notes(dir, &names) {
                    println!("{note}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("poller: {e}");
            ExitCode::FAILURE
        }
    }
}

fn daemon_id(cli: &Cli) -> String {
    cli.id.clone().unwrap_or_else(|| "0".to_string())
}

fn log_file(cli: &Cli) -> Option<PathBuf> {
    match (&cli.log_file, cli.daemon) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some(PathBuf::from(format!("log/poller.{}.log", daemon_id(cli)))),
        (None, false) => None,
    }
}

fn init_logging(cli: &Cli, is_start: bool) -> Result<(), Error> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file = if is_start && std::env::var_os(DAEMON_CHILD_ENV).is_none() {
        match log_file(cli) {
            Some(path) => Some(open_log(&path)?),
            None => None,
        }
    } else {
        None
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let result = match (cli.log_format, file) {
        (LogFormat::Human, Some(f)) => builder
            .with_ansi(false)
            .event_format(HumanFormat { ansi: false })
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        (LogFormat::Human, None) => builder
            .with_ansi(ansi)
            .event_format(HumanFormat { ansi })
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Json, Some(f)) => builder
            .json()
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        (LogFormat::Json, None) => builder.json().with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests calling main twice) keeps the first subscriber.
    let _ = result;
    Ok(())
}

/// The human log line: `<timestamp> <LEVEL> <message>`. The poller's own
/// lines are the original's (`Processing high:<id> ({...})`): they name the
/// event already, so they are printed without the span. Lines the app logs
/// from inside an event get the span in front, as
/// `event{event=hello_world id=... queue=high attempt=1}: ...`.
struct HumanFormat {
    ansi: bool,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for HumanFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::FormatFields as _;
        use tracing_subscriber::fmt::time::FormatTime as _;
        let meta = event.metadata();
        if tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut w)
            .is_err()
        {
            write!(w, "-")?;
        }
        let level = *meta.level();
        let color = match level {
            tracing::Level::ERROR => "31",
            tracing::Level::WARN => "33",
            tracing::Level::INFO => "32",
            tracing::Level::DEBUG => "34",
            tracing::Level::TRACE => "35",
        };
        if self.ansi {
            write!(w, " \x1b[{color}m{level:>5}\x1b[0m ")?;
        } else {
            write!(w, " {level:>5} ")?;
        }
        if !meta.target().starts_with("action_event")
            && let Some(scope) = ctx.event_scope()
        {
            for span in scope.from_root() {
                let ext = span.extensions();
                match ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    Some(fields) if !fields.is_empty() => {
                        write!(w, "{}{{{}}}: ", span.name(), fields)?
                    }
                    _ => write!(w, "{}: ", span.name())?,
                }
            }
        }
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create log dir {}", dir.display()), e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("cannot open log file {}", path.display()), e))
}

/// Starts this same program again in the background, detached from the
/// terminal (its own session), logging to the log file; returns once the
/// child has written its PID file.
fn spawn_daemon(cli: &Cli, args: &[OsString]) -> Result<(), Error> {
    use std::os::unix::process::CommandExt as _;
    let id = daemon_id(cli);
    let log_path = log_file(cli).unwrap_or_else(|| PathBuf::from(format!("log/poller.{id}.log")));
    let log = open_log(&log_path)?;
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

fn queues(cli: &Cli) -> Vec<String> {
    match &cli.queues {
        Some(q) => q
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => {
            let mut qs: Vec<String> = DEFAULT_QUEUES.iter().map(|q| q.to_string()).collect();
            if let Ok(r) = crate::registry() {
                let mut extra: Vec<String> = r
                    .events()
                    .map(|e| e.queue.to_string())
                    .filter(|q| !qs.contains(q))
                    .collect();
                extra.sort();
                extra.dedup();
                qs.extend(extra);
            }
            qs
        }
    }
}

async fn start(cli: &Cli, state: State) -> Result<(), Error> {
    let registry = crate::registry()?;
    let url = broker::resolve_url(cli.broker.as_deref());
    let shutdown = Shutdown::new();
    spawn_signal_handler(shutdown.clone())?;
    let broker = connect_waiting(&url, &shutdown).await?;
    let queues = queues(cli);
    for q in &queues {
        if !registry.events().any(|e| e.queue == q) {
            tracing::debug!("No event of this binary defaults to queue `{q}`");
        }
    }
    let id = if cli.daemon || std::env::var_os(DAEMON_CHILD_ENV).is_some() {
        Some(daemon_id(cli))
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
    let network = url.starts_with("amqp://") || url.starts_with("amqps://");
    let mut wait = Duration::from_millis(500);
    let mut stop = shutdown.tx.subscribe();
    loop {
        match broker::connect(url).await {
            Ok(b) => return Ok(b),
            Err(e @ Error::Broker { .. }) if network => {
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

fn stop(cli: &Cli) -> Result<(), Error> {
    let targets: Vec<String> = match &cli.id {
        Some(id) => vec![id.clone()],
        None => pidfile::list_pollers(&cli.pid_dir)
            .into_iter()
            .map(|p| p.id)
            .collect(),
    };
    if targets.is_empty() {
        println!("No pollers in {}", cli.pid_dir.display());
        return Ok(());
    }
    let mut failed = Vec::new();
    for id in targets {
        let path = pidfile::pid_path(&cli.pid_dir, &id);
        let Some(pid) = pidfile::read_pid(&path) else {
            println!("poller {id}: no PID file at {}", path.display());
            continue;
        };
        if !pidfile::process_alive(pid) {
            pidfile::release(&cli.pid_dir, &id, pid);
            println!("poller {id}: stale PID file named pid {pid}, which is not running; removed");
            continue;
        }
        if let Err(e) = pidfile::signal(pid, libc::SIGTERM) {
            failed.push(format!("poller {id} (pid {pid}): cannot signal: {e}"));
            continue;
        }
        println!("poller {id}: stopping pid {pid} (it finishes its events in hand)");
        let limit = cli.shutdown_timeout + Duration::from_secs(10);
        let started = Instant::now();
        while pidfile::process_alive(pid) && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        if pidfile::process_alive(pid) {
            failed.push(format!(
                "poller {id} (pid {pid}) still runs after {}",
                humantime::format_duration(limit)
            ));
        } else {
            pidfile::release(&cli.pid_dir, &id, pid);
            println!("poller {id}: stopped");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Registry(failed.join("; ")))
    }
}

async fn status(cli: &Cli) -> Result<(), Error> {
    pid_file_status(cli);
    broker_status(cli).await;
    Ok(())
}

/// How long `status` waits for the broker before it gives up on the
/// cross-machine table.
const STATUS_BOUND: Duration = Duration::from_secs(5);
/// How long `status` collects the pollers' answers.
const STATUS_WAIT: Duration = Duration::from_millis(1500);

/// The live pollers of every machine, when the broker offers that view.
/// Bounded by [`STATUS_BOUND`]; a broker that does not answer is a one-line
/// warning, not an error: the PID-file table is printed already.
async fn broker_status(cli: &Cli) {
    let url = broker::resolve_url(cli.broker.as_deref());
    // SQLite's view is the PID files: do not open (or create) its file.
    if url.starts_with("sqlite:") {
        return;
    }
    let ask = async {
        let b = broker::connect(&url).await?;
        b.pollers(STATUS_WAIT).await
    };
    let pollers = match tokio::time::timeout(STATUS_BOUND, ask).await {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            eprintln!("warning: cannot list the pollers of other machines: {e}");
            return;
        }
        Err(_) => {
            eprintln!(
                "warning: cannot list the pollers of other machines: {} did not answer within {}",
                redact_url(&url),
                humantime::format_duration(STATUS_BOUND)
            );
            return;
        }
    };
    println!();
    println!("Pollers on {}:", redact_url(&url));
    if pollers.is_empty() {
        println!("(none answered)");
        return;
    }
    println!(
        "{:<8} {:<16} {:<8} {:<24} {:<5} IN-FLIGHT",
        "ID", "HOST", "PID", "QUEUES", "CONC"
    );
    let mut pollers = pollers;
    pollers.sort_by(|a, b| (&a.host, &a.id, a.pid).cmp(&(&b.host, &b.id, b.pid)));
    for p in pollers {
        let mut in_flight = p.in_flight.len().to_string();
        if !p.in_flight.is_empty() {
            let events: Vec<String> = p
                .in_flight
                .iter()
                .map(|e| format!("{}:{}", e.name, e.id))
                .collect();
            in_flight = format!("{in_flight}: {}", events.join(", "));
        }
        println!(
            "{:<8} {:<16} {:<8} {:<24} {:<5} {}",
            p.id,
            p.host,
            p.pid,
            p.queues.join(","),
            p.concurrency,
            in_flight
        );
    }
}

/// The pollers of this machine, from the PID files.
fn pid_file_status(cli: &Cli) {
    let rows = pidfile::list_pollers(&cli.pid_dir);
    if rows.is_empty() {
        println!("No pollers in {}", cli.pid_dir.display());
        return;
    }
    println!(
        "{:<8} {:<8} {:<6} {:<24} {:<5} BROKER",
        "ID", "PID", "ALIVE", "QUEUES", "CONC"
    );
    for r in rows {
        let (queues, conc, broker) = match &r.info {
            Some(i) => (
                i.queues.join(","),
                i.concurrency.to_string(),
                i.broker.clone(),
            ),
            None => ("?".into(), "?".into(), "?".into()),
        };
        println!(
            "{:<8} {:<8} {:<6} {:<24} {:<5} {}",
            r.id,
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            if r.alive { "yes" } else { "no" },
            queues,
            conc,
            broker
        );
    }
}

async fn queue(cli: &Cli, name: &str, params: &[String]) -> Result<(), Error> {
    let mut req = QueueRequest::new(name);
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            return Err(Error::Queue {
                event: name.to_string(),
                message: format!("param `{p}` is not `key=value`"),
            });
        };
        req = match k {
            "queue" => req.queue(v),
            "delay" => req.delay_str(v),
            "at" => match humantime::parse_rfc3339_weak(v) {
                Ok(t) => req.at(t),
                Err(e) => {
                    return Err(Error::Queue {
                        event: name.to_string(),
                        message: format!("bad time `{v}`: {e} (write e.g. 2026-12-01T09:00:00Z)"),
                    });
                }
            },
            _ => match serde_json::from_str::<serde_json::Value>(v) {
                Ok(json) => req.param(k, json),
                Err(_) => req.param(k, v),
            },
        };
    }
    let envelope = req.into_envelope()?;
    let url = broker::resolve_url(cli.broker.as_deref());
    let client = Client::connect(&url).await?;
    client.broker().publish(&envelope).await?;
    println!(
        "Queued {} on {}: {} ({})",
        envelope.name,
        envelope.queue,
        envelope.id,
        envelope.params_json()
    );
    Ok(())
}

async fn dead(cli: &Cli, command: &DeadCommand) -> Result<(), Error> {
    let url = broker::resolve_url(cli.broker.as_deref());
    let broker = broker::connect(&url).await?;
    match command {
        DeadCommand::List { queue, event } => {
            let filter = DeadFilter {
                queue: queue.clone(),
                event: event.clone(),
                died_before_ms: None,
            };
            let list = broker.dead_list(&filter).await?;
            if list.is_empty() {
                println!("No dead events");
            }
            for d in list {
                println!(
                    "{}  {}  {}  attempts={}  died={}  {}",
                    d.id,
                    d.queue,
                    d.name.as_deref().unwrap_or("?"),
                    d.attempts,
                    fmt_time(d.died_at_ms),
                    d.reason
                );
            }
        }
        DeadCommand::Show { id } => {
            let list = broker.dead_list(&DeadFilter::default()).await?;
            let d = list
                .into_iter()
                .find(|d| &d.id == id)
                .ok_or_else(|| Error::NoSuchDeadEvent(id.clone()))?;
            println!("id:       {}", d.id);
            println!("event:    {}", d.name.as_deref().unwrap_or("?"));
            println!("queue:    {}", d.queue);
            println!("attempts: {}", d.attempts);
            println!("died:     {}", fmt_time(d.died_at_ms));
            println!("reason:   {}", d.reason);
            println!("body:     {}", d.body);
            for e in &d.errors {
                println!(
                    "  attempt {} at {}: {}",
                    e.attempt,
                    fmt_time(e.at_ms),
                    e.message
                );
            }
        }
        DeadCommand::Retry {
            id,
            all,
            queue,
            event,
        } => {
            let filter = DeadFilter {
                queue: queue.clone(),
                event: event.clone(),
                died_before_ms: None,
            };
            let n = match (id, *all) {
                (Some(id), false) => broker.dead_retry(Some(id), &filter).await?,
                (None, true) => broker.dead_retry(None, &filter).await?,
                _ => {
                    return Err(Error::Queue {
                        event: "dead retry".into(),
                        message: "give one id or --all".into(),
                    });
                }
            };
            println!("Retried {n} dead event(s)");
        }
        DeadCommand::Purge {
            id,
            all,
            older_than,
            queue,
            event,
        } => {
            let filter = DeadFilter {
                queue: queue.clone(),
                event: event.clone(),
                died_before_ms: older_than.map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
            };
            let n = match (id, *all || older_than.is_some()) {
                (Some(id), false) => broker.dead_purge(Some(id), &filter).await?,
                (None, true) => broker.dead_purge(None, &filter).await?,
                _ => {
                    return Err(Error::Queue {
                        event: "dead purge".into(),
                        message: "give one id, --all or --older-than".into(),
                    });
                }
            };
            println!("Purged {n} dead event(s)");
        }
    }
    Ok(())
}

fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::HumanFormat;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buf").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn human_lines_keep_the_original_text_and_app_lines_get_the_span() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(HumanFormat { ansi: false })
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "event",
                event = "hello_world",
                id = "0193",
                queue = "high",
                attempt = 1u32
            );
            span.in_scope(|| {
                tracing::info!(target: "action_event::poller", "Processing high:0193 ({{}})");
                tracing::warn!(target: "my_app::events", user = 7, "sending mail");
            });
        });
        let text = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let rest = |l: &str| {
            l.split_once(' ')
                .expect("timestamp")
                .1
                .trim_start()
                .to_string()
        };
        assert_eq!(rest(lines[0]), "INFO Processing high:0193 ({})");
        assert_eq!(
            rest(lines[1]),
            "WARN event{event=\"hello_world\" id=\"0193\" queue=\"high\" attempt=1}: sending mail user=7"
        );
    }
}
