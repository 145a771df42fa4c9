//! The `sqlite://` URL, parsed into `Options`.
//!
//! `sqlite://relative/path.db` or `sqlite:///absolute/path.db`, with optional
//! query options:
//!
//! | option         | default  | meaning                                                        |
//! |----------------|----------|----------------------------------------------------------------|
//! | `lease`        | `30s`    | how long a taken event stays invisible without a heartbeat     |
//! | `synchronous`  | `normal` | `normal` or `full` (see *Durability* in [`super::schema`])     |
//! | `busy_timeout` | `5s`     | how long to wait for another process's write lock              |
//! | `poll`         | `100ms`  | longest sleep between two looks at an idle queue               |
//! | `batch`        | `8`      | events one claim takes from a queue with a backlog (see [`super::ahead`]) |
//! | `ack_linger`   | `2ms`    | while a poller works through a backlog, how long an ack waits for the next claim to commit it with (`0s`: at once; see [`super::claim`], *Acks ride on claims*) |
//!
//! e.g. `sqlite://var/events.db?lease=2m&synchronous=full`. An unknown option
//! or a bad value is an [`Error::BadUrl`] naming it. The file is created
//! when missing, its directory is not: a directory that does not exist is
//! an [`Error::BadUrl`] naming it (see *Where the file is* in
//! [`super::schema`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, redact_url};

pub(super) const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_POLL: Duration = Duration::from_millis(100);
const DEFAULT_BATCH: u32 = 8;
const DEFAULT_ACK_LINGER: Duration = Duration::from_millis(2);

/// The parsed options of a `sqlite://` URL.
#[derive(Clone, Debug)]
pub(super) struct Options {
    pub(super) path: PathBuf,
    pub(super) lease: Duration,
    pub(super) full_sync: bool,
    pub(super) busy_timeout: Duration,
    pub(super) poll: Duration,
    pub(super) batch: u32,
    pub(super) ack_linger: Duration,
}

impl Options {
    pub(super) fn parse(url: &str) -> Result<Options, Error> {
        let bad = |message: String| Error::BadUrl {
            url: redact_url(url),
            message,
        };
        let rest = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| bad("expected `sqlite://path.db`".into()))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(bad(
                "no file path: use `sqlite://relative/path.db` or `sqlite:///absolute/path.db`"
                    .into(),
            ));
        }
        if path.contains('#') {
            return Err(bad("a `#` fragment is not allowed in a sqlite URL".into()));
        }
        let mut cfg = Options {
            path: PathBuf::from(path),
            lease: DEFAULT_LEASE,
            full_sync: false,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            poll: DEFAULT_POLL,
            batch: DEFAULT_BATCH,
            ack_linger: DEFAULT_ACK_LINGER,
        };
        let duration = |key: &str, value: &str| {
            humantime::parse_duration(value).map_err(|e| {
                bad(format!(
                    "option `{key}`: bad duration `{value}`: {e} (e.g. `30s`)"
                ))
            })
        };
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "lease" => {
                    cfg.lease = duration(&key, &value)?;
                    if cfg.lease < Duration::from_millis(3) {
                        return Err(bad(format!(
                            "option `lease`: `{value}` is too short (at least 3ms; the default is 30s)"
                        )));
                    }
                }
                "busy_timeout" => cfg.busy_timeout = duration(&key, &value)?,
                "ack_linger" => cfg.ack_linger = duration(&key, &value)?,
                "poll" => {
                    cfg.poll = duration(&key, &value)?;
                    if cfg.poll.is_zero() {
                        return Err(bad(
                            "option `poll`: must be longer than 0 (the default is 100ms)".into(),
                        ));
                    }
                }
                "batch" => {
                    cfg.batch = value
                        .parse::<u32>()
                        .ok()
                        .filter(|b| (1..=1000).contains(b))
                        .ok_or_else(|| {
                            bad(format!(
                                "option `batch`: `{value}` is not a number from 1 to 1000 (the default is {DEFAULT_BATCH})"
                            ))
                        })?;
                }
                "synchronous" => {
                    cfg.full_sync = match value.to_ascii_lowercase().as_str() {
                        "normal" => false,
                        "full" => true,
                        _ => {
                            return Err(bad(format!(
                                "option `synchronous`: `{value}` is not `normal` or `full`"
                            )));
                        }
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown option `{other}`: expected `lease`, `synchronous`, `busy_timeout`, `poll`, `batch` or `ack_linger`"
                    )));
                }
            }
        }
        if cfg.ack_linger >= cfg.lease {
            return Err(bad(format!(
                "option `ack_linger`: {} is not shorter than the lease ({}); the default is 2ms",
                humantime::format_duration(cfg.ack_linger),
                humantime::format_duration(cfg.lease)
            )));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options() {
        let c = Options::parse(
            "sqlite:///tmp/x/a.db?lease=2m&synchronous=FULL&busy_timeout=1s&poll=10ms",
        )
        .unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x/a.db"));
        assert_eq!(c.lease, Duration::from_secs(120));
        assert!(c.full_sync);
        assert_eq!(c.busy_timeout, Duration::from_secs(1));
        assert_eq!(c.poll, Duration::from_millis(10));
        let c = Options::parse("sqlite://rel/a.db").unwrap();
        assert_eq!(c.path, PathBuf::from("rel/a.db"));
        assert_eq!(c.lease, DEFAULT_LEASE);
        assert!(!c.full_sync);
        assert!(Options::parse("sqlite://").is_err());
        assert!(Options::parse("sqlite://a.db?poll=0s").is_err());
        assert_eq!(c.ack_linger, DEFAULT_ACK_LINGER);
        let c = Options::parse("sqlite://a.db?ack_linger=0s").unwrap();
        assert_eq!(c.ack_linger, Duration::ZERO);
        let e = Options::parse("sqlite://a.db?lease=1s&ack_linger=2s").unwrap_err();
        assert!(e.to_string().contains("`ack_linger`"), "{e}");
    }
}
