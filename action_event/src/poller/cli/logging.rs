//! The log every subcommand writes: the human format (the original's
//! lines, with a timestamp) or JSON, to stderr or a file; `RUST_LOG` sets
//! the level.

use std::io::IsTerminal as _;
use std::path::Path;

use clap::ValueEnum;

use super::log_buffer::BufferedFile;
use super::log_fast::{FastFields, write_now};
use crate::Error;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum LogFormat {
    /// Lines with a timestamp.
    Human,
    /// One JSON object per line.
    Json,
}

/// The log of `start`: `format` to `file` (created with its directory), or
/// to stderr.
pub(super) fn init(format: LogFormat, file: Option<&Path>) -> Result<(), Error> {
    use tracing_subscriber::EnvFilter;
    // lapin logs a connection the broker closed as ERROR; the RabbitMQ
    // backend logs each loss itself (`RUST_LOG=info,lapin=debug` shows lapin's lines).
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=off"));
    let file = match file {
        Some(path) => Some(open_log(path)?),
        None => None,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let result = match (format, file) {
        (LogFormat::Human, Some(f)) => builder
            .with_ansi(false)
            .fmt_fields(FastFields)
            .event_format(HumanFormat { ansi: false })
            .with_writer(
                BufferedFile::new(f)
                    .map_err(|e| Error::io("cannot start the log file's writer thread", e))?,
            )
            .try_init(),
        (LogFormat::Human, None) => builder
            .with_ansi(ansi)
            .fmt_fields(FastFields)
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

/// The log of a one-shot subcommand (stop, status, queue, dead): what the
/// library logs while it works, in the human format on stderr. Its result
/// and its errors are printed, not logged.
pub(super) fn init_one_shot() {
    // Cannot fail: no file to open.
    let _ = init(LogFormat::Human, None);
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
        let meta = event.metadata();
        write_now(&mut w)?;
        // The level padded to 5, as `{level:>5}` writes it.
        let (level, color) = match *meta.level() {
            tracing::Level::ERROR => ("ERROR", "31"),
            tracing::Level::WARN => (" WARN", "33"),
            tracing::Level::INFO => (" INFO", "32"),
            tracing::Level::DEBUG => ("DEBUG", "34"),
            tracing::Level::TRACE => ("TRACE", "35"),
        };
        if self.ansi {
            write!(w, " \x1b[{color}m{level}\x1b[0m ")?;
        } else {
            w.write_char(' ')?;
            w.write_str(level)?;
            w.write_char(' ')?;
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
        w.write_char('\n')
    }
}

/// Opens (appends to) a log file, creating its directory.
pub(super) fn open_log(path: &Path) -> Result<std::fs::File, Error> {
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

#[cfg(test)]
mod tests {
    use crate::poller::test_log::Buf;

    use super::{FastFields, HumanFormat};

    #[test]
    fn human_lines_keep_the_original_text_and_app_lines_get_the_span() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(FastFields)
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
