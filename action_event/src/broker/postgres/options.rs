//! The `postgres://` URL, parsed into `Options`.
//!
//! `postgres://user:password@host:5432/database` (also `postgresql://`),
//! with sqlx's own connection options (`sslmode`, `application_name`, ...)
//! and these, which action_event reads and removes before connecting:
//!
//! | option    | default        | meaning                                                        |
//! |-----------|----------------|----------------------------------------------------------------|
//! | `schema`  | `action_event` | the schema holding the tables (created when missing)           |
//! | `lease`   | `30s`          | how long a taken event stays invisible without a heartbeat     |
//! | `poll`    | `1s`           | longest sleep of an idle take between two looks (a safety net: idle takes wake on `LISTEN/NOTIFY`) |
//! | `pool`    | `10`           | most connections the broker opens for its operations (plus one for `LISTEN`) |
//! | `batch`   | `8`            | fewest events one claim takes from a queue with a backlog (more when more takes wait; see [`super::claim`]); `1` claims one at a time |
//! | `migrate` | `auto`         | `auto`: opening runs the migrations; `off`: opening refuses a schema that is not up to date (`poller migrate` runs them) |
//!
//! e.g. `postgres://app@db/app?schema=jobs&lease=2m`. An unknown
//! action_event option is passed to sqlx, which refuses what it does not
//! know either; a bad value is an [`Error::BadUrl`] naming it.

use std::time::Duration;

use crate::{Error, redact_url};

pub(super) const DEFAULT_SCHEMA: &str = "action_event";
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const DEFAULT_POOL: u32 = 10;
const DEFAULT_BATCH: u32 = 8;

/// The parsed options of a `postgres://` URL.
#[derive(Clone, Debug)]
pub(super) struct Options {
    /// The URL sqlx connects to: ours, less action_event's options.
    pub(super) connect_url: String,
    pub(super) schema: String,
    pub(super) lease: Duration,
    pub(super) poll: Duration,
    pub(super) pool: u32,
    /// Fewest events one claim takes (see [`super::claim`]).
    pub(super) batch: u32,
    pub(super) migrate: bool,
}

impl Options {
    pub(super) fn parse(url: &str) -> Result<Options, Error> {
        let bad = |message: String| Error::BadUrl {
            url: redact_url(url),
            message,
        };
        let mut parsed = url::Url::parse(url).map_err(|e| {
            bad(format!(
                "not a URL ({e}): expected `postgres://user@host:5432/database`"
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad("expected `postgres://` or `postgresql://`".into()));
        }
        let mut cfg = Options {
            connect_url: String::new(),
            schema: DEFAULT_SCHEMA.to_string(),
            lease: DEFAULT_LEASE,
            poll: DEFAULT_POLL,
            pool: DEFAULT_POOL,
            batch: DEFAULT_BATCH,
            migrate: true,
        };
        let duration = |key: &str, value: &str| {
            humantime::parse_duration(value).map_err(|e| {
                bad(format!(
                    "option `{key}`: bad duration `{value}`: {e} (e.g. `30s`)"
                ))
            })
        };
        let mut keep = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "schema" => {
                    check_schema(&value).map_err(|m| bad(format!("option `schema`: {m}")))?;
                    cfg.schema = value.into_owned();
                }
                "lease" => {
                    cfg.lease = duration(&key, &value)?;
                    if cfg.lease < Duration::from_millis(300) {
                        return Err(bad(format!(
                            "option `lease`: `{value}` is too short (at least 300ms; the default is 30s)"
                        )));
                    }
                }
                "poll" => {
                    cfg.poll = duration(&key, &value)?;
                    if cfg.poll.is_zero() {
                        return Err(bad(
                            "option `poll`: must be longer than 0 (the default is 1s)".into(),
                        ));
                    }
                }
                "pool" => {
                    cfg.pool = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                                "option `pool`: `{value}` is not a number from 1 to 1000 (the default is {DEFAULT_POOL})"
                            ))
                        })?;
                }
                "batch" => {
                    cfg.batch = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                                "option `batch`: `{value}` is not a number from 1 to 1000 (the default is {DEFAULT_BATCH})"
                            ))
                        })?;
                }
                "migrate" => {
                    cfg.migrate = match &*value {
                        "auto" => true,
                        "off" => false,
                        _ => {
                            return Err(bad(format!(
                                "option `migrate`: `{value}` is not `auto` or `off`"
                            )));
                        }
                    }
                }
                _ => keep.push((key.into_owned(), value.into_owned())),
            }
        }
        if keep.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(keep);
        }
        cfg.connect_url = parsed.to_string();
        Ok(cfg)
    }
}

/// A schema name action_event accepts: lowercase letters, digits and `_`,
/// not starting with a digit, at most 63 bytes (it is written into SQL
/// unquoted, so it must need no quoting).
pub(super) fn check_schema(schema: &str) -> Result<(), String> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{schema}` is not a schema name action_event uses: lowercase letters, digits and `_`, \
             not starting with a digit, at most 63 characters (e.g. `action_event`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options() {
        let c = Options::parse(
            "postgres://u:pw@h:5433/db?schema=jobs&lease=2m&poll=50ms&pool=3&batch=32&sslmode=disable",
        )
        .unwrap();
        assert_eq!(c.batch, 32);
        assert_eq!(c.schema, "jobs");
        assert_eq!(c.lease, Duration::from_secs(120));
        assert_eq!(c.poll, Duration::from_millis(50));
        assert_eq!(c.pool, 3);
        assert_eq!(c.connect_url, "postgres://u:pw@h:5433/db?sslmode=disable");
        let c = Options::parse("postgresql://h/db").unwrap();
        assert_eq!(c.schema, DEFAULT_SCHEMA);
        assert_eq!(c.connect_url, "postgresql://h/db");
        assert!(c.migrate);
        for bad in [
            "postgres://h/db?schema=Jobs",
            "postgres://h/db?schema=a;drop",
            "postgres://h/db?lease=soon",
            "postgres://h/db?pool=0",
            "postgres://h/db?batch=0",
            "postgres://h/db?migrate=maybe",
        ] {
            let e = Options::parse(bad).unwrap_err().to_string();
            assert!(e.contains("option `"), "{bad}: {e}");
        }
    }
}
