//! The poller's command line (clap), one module per subcommand:
//!
//! - [`start`]: run a poller, in the foreground or as a daemon (the default
//!   when no subcommand is given: `poller --exit-when-empty`);
//! - [`stop`]: stop pollers through their PID files;
//! - [`status`]: the pollers of this machine, and of every machine when the
//!   broker offers that view;
//! - [`queue`]: queue one event from the shell;
//! - [`pause`]: pause and resume queues on every poller;
//! - [`dead`]: list, show, retry and purge dead events;
//! - [`generate`]: generate an event's code in a Cargo project;
//! - `web`: the dashboard and /metrics (feature `web`).
//!
//! Each subcommand takes only its own flags: `poller dead list --concurrency 8`
//! is a usage error (exit 2) naming the subcommand `--concurrency` belongs to.
//! Flags written before the subcommand belong to it, as they always did:
//! `poller --id 2 stop` is `poller stop --id 2` (see [`options_after_subcommand`]).
//! [`logging`] sets up the log every subcommand writes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::State;

mod dead;
mod generate;
mod log_buffer;
mod log_fast;
mod logging;
mod migrate;
mod pause;
mod queue;
mod start;
mod status;
mod stop;
#[cfg(feature = "web")]
mod web;

use start::RunArgs;

/// The poller of an app: run it from your own binary so it links your events.
#[derive(Debug, Parser)]
#[command(
    name = "poller",
    version = concat!("(action_event ", env!("CARGO_PKG_VERSION"), ")"),
    about = "Runs the events of this app: takes them from the broker, highest priority queue first",
    after_help = "Examples:\n  poller                                   foreground, all queues, high first\n  poller --daemon --id 2 start             daemon with PID file tmp/pids/poller.2.pid\n  poller --id 2 --queues \"high medium\" start\n  poller --id 2 stop\n  poller status\n  poller queue hello_world name=world queue=high\n  poller dead list\n  poller pause low                         no poller starts a `low` event until `poller resume low`\n  poller --metrics 127.0.0.1:9187          Prometheus metrics at http://127.0.0.1:9187/metrics\n  poller generate event HelloWorld         writes src/events/hello_world.rs\n  poller web --bind 127.0.0.1:9188         the dashboard at http://127.0.0.1:9188/\n  poller migrate --print                   the PostgreSQL schema's SQL\n\nFlags written before a subcommand belong to it: `poller --id 2 stop` is `poller stop --id 2`."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// With no subcommand, `poller` runs a poller: these are `start`'s flags.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the poller (the default).
    Start(RunArgs),
    /// Stop the poller with --id (every poller of the PID dir without it):
    /// it finishes its events in hand and exits.
    Stop(stop::StopArgs),
    /// List the pollers of this machine from their PID files; with a broker
    /// that offers it (RabbitMQ), also the live pollers of every machine.
    Status(status::StatusArgs),
    /// Queue an event: `queue hello_world name=world [queue=high] [delay=30s]`.
    Queue(queue::QueueArgs),
    /// Pause queues on every poller of every machine: running events
    /// finish, none of theirs start until `resume`; nothing is lost.
    Pause(pause::PauseArgs),
    /// Resume paused queues: pollers take their events again within a second.
    Resume(pause::ResumeArgs),
    /// Dead events: list, show, retry, purge.
    Dead(dead::DeadArgs),
    /// Generate code in the Cargo project of the current directory.
    Generate(generate::GenerateArgs),
    /// Bring the broker's schema up to date (PostgreSQL), or `--print` its SQL.
    Migrate(migrate::MigrateArgs),
    /// Serve the dashboard (queues, pollers, events, dead letters) and
    /// /metrics: `web --bind 127.0.0.1:9188 [--auth basic:USER:PASS] [--read-only]`.
    #[cfg(feature = "web")]
    Web(web::WebArgs),
}

/// `--broker`, for the subcommands that talk to the broker.
#[derive(Debug, Args)]
struct BrokerArg {
    /// Broker URL (default: $ACTION_EVENT_URL, else sqlite://action_event.db).
    #[arg(long)]
    broker: Option<String>,
}

/// `--pid-dir`, for the subcommands that read or write PID files.
#[derive(Debug, Args)]
struct PidDirArg {
    /// Where PID files live (relative to the working directory).
    #[arg(long, default_value = "tmp/pids")]
    pid_dir: PathBuf,
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
/// Exit codes: 0 done; 1 the command failed (a broker that cannot be
/// reached, a dead event that does not exist, a poller that failed); 2 the
/// command line is wrong (clap's usage errors, and misuse such as
/// `dead retry` with neither an id nor `--all`), with the usage on stderr.
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
    let cli = match parse(args.clone()) {
        Ok(c) => c,
        Err(e) => return usage_exit(e),
    };
    match cli.command {
        Some(Command::Generate(g)) => generate::run(&g),
        Some(Command::Start(run)) => start::main(run, &args, state),
        None => start::main(cli.run, &args, state),
        Some(Command::Stop(a)) => one_shot(|| async move { stop::run(&a) }),
        Some(Command::Status(a)) => one_shot(|| async move { status::run(&a).await }),
        Some(Command::Queue(a)) => one_shot(|| async move { queue::run(&a).await }),
        Some(Command::Dead(a)) => one_shot(|| async move { dead::run(&a).await }),
        Some(Command::Pause(a)) => one_shot(|| async move { pause::pause(&a).await }),
        Some(Command::Resume(a)) => one_shot(|| async move { pause::resume(&a).await }),
        Some(Command::Migrate(a)) => one_shot(|| async move { migrate::run(&a).await }),
        #[cfg(feature = "web")]
        Some(Command::Web(a)) => one_shot(|| async move { web::run(&a).await }),
    }
}

/// Parses the command line: flags before the subcommand are moved after
/// it, and a flag a subcommand does not take gets a tip naming the
/// subcommands that do.
fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    if let Some(bin) = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
    {
        let _ = BIN_NAME.set(bin.to_string_lossy().into_owned());
    }
    let mut cmd = Cli::command();
    let args = options_after_subcommand(&cmd, args);
    let matches = cmd
        .try_get_matches_from_mut(args)
        .map_err(|e| with_owner_tip(&cmd, e))?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Options written before the subcommand belong to the subcommand:
/// `poller --daemon --id 2 start` is `poller start --daemon --id 2`, and
/// `poller --id 2 stop` is `poller stop --id 2`. This moves them after its
/// name, so that each subcommand parses its own flags only (clap's global
/// flags would let every subcommand take every flag). With no subcommand,
/// nothing moves: the root takes `start`'s flags.
fn options_after_subcommand(cmd: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let takes_value = |arg: Option<&clap::Arg>| arg.is_some_and(|a| a.get_action().takes_values());
    let mut i = 1;
    while i < args.len() {
        let Some(a) = args[i].to_str() else {
            return args;
        };
        if a == "--" {
            return args;
        }
        if let Some(long) = a.strip_prefix("--") {
            if !long.contains('=')
                && takes_value(cmd.get_arguments().find(|x| x.get_long() == Some(long)))
            {
                i += 1; // its value
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| s.chars().count() == 1) {
            let c = short.chars().next();
            if takes_value(cmd.get_arguments().find(|x| x.get_short() == c)) {
                i += 1;
            }
        } else if !a.starts_with('-') {
            if i == 1 || cmd.find_subcommand(a).is_none() {
                return args;
            }
            let mut moved = Vec::with_capacity(args.len());
            moved.push(args[0].clone());
            moved.push(args[i].clone());
            moved.extend_from_slice(&args[1..i]);
            moved.extend_from_slice(&args[i + 1..]);
            return moved;
        }
        i += 1;
    }
    args
}

/// For a flag this subcommand does not know, a tip naming the subcommands
/// that take it: ``tip: `--concurrency` is a flag of `poller start` (or
/// `poller` alone)``.
fn with_owner_tip(cmd: &clap::Command, mut e: clap::Error) -> clap::Error {
    if e.kind() != ErrorKind::UnknownArgument {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let flag = arg.split('=').next().unwrap_or(arg).to_string();
    let Some(long) = flag.strip_prefix("--") else {
        return e;
    };
    let mut owners = Vec::new();
    owners_of(cmd, long, "poller", &mut owners);
    // `start` also is `poller` alone: name it once.
    owners.retain(|o| o != "poller");
    if owners.is_empty() {
        return e;
    }
    let names: Vec<String> = owners
        .iter()
        .map(|o| {
            if o == "poller start" {
                "`poller start` (or `poller` alone)".to_string()
            } else {
                format!("`{o}`")
            }
        })
        .collect();
    let tip = format!(
        "`{flag}` is a flag of {}: write it with that subcommand",
        names.join(", ")
    );
    let mut tips = match e.get(ContextKind::Suggested) {
        Some(ContextValue::StyledStrs(v)) => v.clone(),
        _ => Vec::new(),
    };
    // clap's own tip for a subcommand with free arguments ("to pass it as
    // a value, use `-- --flag`") is rarely what was meant: ours comes first.
    tips.insert(0, tip.into());
    e.insert(ContextKind::Suggested, ContextValue::StyledStrs(tips));
    e
}

/// The subcommand paths (`poller dead list`) that take `--long`.
fn owners_of(cmd: &clap::Command, long: &str, path: &str, out: &mut Vec<String>) {
    if cmd.get_arguments().any(|a| a.get_long() == Some(long)) {
        out.push(path.to_string());
    }
    for sub in cmd.get_subcommands() {
        owners_of(sub, long, &format!("{path} {}", sub.get_name()), out);
    }
}

/// The program's name as it was run (`poller`, or the app's own name for
/// it), for the usage lines of [`misuse`] errors: clap's own errors use it.
static BIN_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A usage error of subcommand `path` (e.g. `["dead", "retry"]`), formatted
/// like clap's own: `error: ...`, its usage line, exit code 2.
fn misuse(path: &[&str], message: impl std::fmt::Display) -> clap::Error {
    let mut cmd = Cli::command();
    if let Some(bin) = BIN_NAME.get() {
        cmd = cmd.bin_name(bin);
    }
    cmd.build(); // names the subcommands `poller dead retry` in their usage
    for name in path {
        match cmd.find_subcommand(name) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    cmd.error(ErrorKind::InvalidValue, message)
}

/// Prints a clap error (or help, or the version) and returns its exit code.
fn usage_exit(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// Why a one-shot subcommand failed: the command line (exit 2, with the
/// usage), or the work (exit 1).
enum Failed {
    Usage(clap::Error),
    Run(crate::Error),
}

impl From<crate::Error> for Failed {
    fn from(e: crate::Error) -> Self {
        Failed::Run(e)
    }
}

impl From<clap::Error> for Failed {
    fn from(e: clap::Error) -> Self {
        Failed::Usage(e)
    }
}

/// Runs a subcommand that does one thing and exits (stop, status, queue,
/// dead): its output on stdout, an error as `error: ...` on stderr.
fn one_shot<F, Fut>(work: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), Failed>>,
{
    logging::init_one_shot();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work());
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed::Usage(e)) => usage_exit(e),
        Err(Failed::Run(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn moved(v: &[&str]) -> Vec<String> {
        options_after_subcommand(&Cli::command(), os(v))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn options_before_the_subcommand_move_after_it() {
        assert_eq!(
            moved(&[
                "poller",
                "--daemon",
                "--id",
                "2",
                "--queues",
                "high medium",
                "start"
            ]),
            [
                "poller",
                "start",
                "--daemon",
                "--id",
                "2",
                "--queues",
                "high medium"
            ]
        );
        assert_eq!(
            moved(&["poller", "--id", "2", "stop"]),
            ["poller", "stop", "--id", "2"]
        );
        assert_eq!(
            moved(&["poller", "--broker=sqlite://x.db", "dead", "list"]),
            ["poller", "dead", "--broker=sqlite://x.db", "list"]
        );
        // A value that is a subcommand's name stays a value.
        assert_eq!(
            moved(&["poller", "--id", "stop"]),
            ["poller", "--id", "stop"]
        );
        assert_eq!(moved(&["poller", "-d", "start"]), ["poller", "start", "-d"]);
        for same in [
            &["poller", "--exit-when-empty"][..],
            &["poller", "status", "--pid-dir", "none"],
            &["poller", "queue", "hello_world", "name=world"],
            &["poller", "--", "start"],
        ] {
            assert_eq!(moved(same), same);
        }
    }

    fn parses(v: &[&str]) -> Cli {
        parse(os(v)).unwrap_or_else(|e| panic!("{v:?}: {e}"))
    }

    fn usage(v: &[&str]) -> String {
        match parse(os(v)) {
            Ok(c) => panic!("{v:?} parsed: {c:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{v:?}: {e}");
                e.render().to_string()
            }
        }
    }

    #[test]
    fn every_documented_command_line_parses() {
        let c = parses(&["poller", "--exit-when-empty"]);
        assert!(c.command.is_none() && c.run.exit_when_empty);
        let c = parses(&[
            "poller",
            "--daemon",
            "--id",
            "2",
            "--queues",
            "high medium",
            "start",
        ]);
        let Some(Command::Start(r)) = c.command else {
            panic!("{c:?}")
        };
        assert!(r.daemon);
        assert_eq!(r.id.as_deref(), Some("2"));
        assert_eq!(r.queues.as_deref(), Some("high medium"));
        let c = parses(&["poller", "--id", "2", "stop"]);
        assert!(matches!(c.command, Some(Command::Stop(s)) if s.id.as_deref() == Some("2")));
        assert!(matches!(
            parses(&["poller", "status"]).command,
            Some(Command::Status(_))
        ));
        assert!(matches!(
            parses(&["poller", "status", "--pid-dir", "none"]).command,
            Some(Command::Status(s)) if s.pid_dir.pid_dir == std::path::Path::new("none")
        ));
        assert!(matches!(
            parses(&["poller", "dead", "list"]).command,
            Some(Command::Dead(_))
        ));
        parses(&["poller", "dead", "retry", "--all"]);
        parses(&[
            "poller",
            "dead",
            "list",
            "--broker",
            "sqlite://x.db",
            "--queue",
            "low",
        ]);
        parses(&[
            "poller",
            "--broker",
            "sqlite://x.db",
            "dead",
            "purge",
            "--older-than",
            "7d",
        ]);
        let c = parses(&[
            "poller",
            "queue",
            "hello_world",
            "name=world",
            "delay=10s",
            "queue=low",
        ]);
        assert!(matches!(c.command, Some(Command::Queue(q)) if q.params.len() == 3));
        parses(&["poller", "generate", "event", "HelloWorld", "--dir", "d"]);
        parses(&[
            "poller",
            "start",
            "--concurrency",
            "8",
            "--log-format",
            "json",
        ]);
        parses(&[
            "poller",
            "--queues",
            "medium",
            "--shutdown-timeout",
            "500ms",
        ]);
        parses(&["poller", "--id", "1", "--shutdown-timeout", "5s", "stop"]);
        // The run lines of tests/ (amqp_e2e, observability, tls_e2e, ...).
        for line in [
            &[
                "poller",
                "--concurrency",
                "4",
                "--queues",
                "high medium low",
                "--exit-when-empty",
            ][..],
            &[
                "poller",
                "--queues",
                "medium",
                "--metrics",
                "127.0.0.1:9187",
                "--retry-base",
                "100ms",
            ],
            &[
                "poller",
                "--retry-base",
                "50ms",
                "--queues",
                "medium",
                "--log-format",
                "json",
            ],
            &[
                "poller",
                "--unknown-retries",
                "2",
                "--retry-max",
                "1s",
                "--queues",
                "medium",
            ],
            &[
                "poller",
                "--broker",
                "redis://user:pw@localhost/0",
                "--exit-when-empty",
            ],
            &["poller", "--id", "tls", "--queues", "medium", "start"],
            &[
                "poller",
                "--pid-dir",
                "pids",
                "--log-file",
                "p.log",
                "-d",
                "start",
            ],
        ] {
            parses(line);
        }
    }

    #[test]
    fn a_flag_of_another_subcommand_is_a_usage_error_naming_its_owner() {
        let text = usage(&["poller", "dead", "list", "--concurrency", "8"]);
        assert!(
            text.contains("unexpected argument '--concurrency'"),
            "{text}"
        );
        assert!(
            text.contains("`--concurrency` is a flag of `poller start` (or `poller` alone)"),
            "{text}"
        );
        assert!(text.contains("Usage: poller dead list"), "{text}");
        // Written before the subcommand, it is that subcommand's too.
        let text = usage(&["poller", "--concurrency", "8", "dead", "list"]);
        assert!(
            text.contains("`poller start` (or `poller` alone)"),
            "{text}"
        );
        let text = usage(&["poller", "status", "--id", "2"]);
        assert!(
            text.contains("`--id` is a flag of `poller start` (or `poller` alone), `poller stop`"),
            "{text}"
        );
        let text = usage(&["poller", "--all"]);
        assert!(
            text.contains("`poller dead retry`, `poller dead purge`"),
            "{text}"
        );
        let text = usage(&["poller", "queue", "x", "--daemon"]);
        assert!(
            text.contains("`--daemon` is a flag of `poller start`"),
            "{text}"
        );
    }

    #[test]
    fn misuse_reads_like_a_clap_error() {
        let e = misuse(&["dead", "retry"], "give one id or --all");
        assert_eq!(e.exit_code(), 2);
        let text = e.render().to_string();
        assert!(text.starts_with("error: give one id or --all"), "{text}");
        assert!(text.contains("Usage: poller dead retry"), "{text}");
    }

    #[test]
    fn version() {
        let e = parse(os(&["poller", "--version"])).expect_err("prints the version");
        assert_eq!(e.kind(), ErrorKind::DisplayVersion);
        let text = e.render().to_string();
        assert_eq!(
            text.trim(),
            concat!("poller (action_event ", env!("CARGO_PKG_VERSION"), ")")
        );
    }
}
