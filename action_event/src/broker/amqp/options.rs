//! The URL of the RabbitMQ backend, parsed into [`Options`].
//!
//! # URL
//!
//! `amqp://user:pass@host:5672/vhost?heartbeat=30&prefix=myapp.&publish_timeout=30s&prefetch=32`,
//! or `amqps://user:pass@host:5671/vhost?cacertfile=/etc/myapp/ca.pem` over TLS
//! (the `tls` feature; without it an `amqps://` URL is an error naming it).
//! lapin's own query options (`heartbeat`, `frame_max`, `channel_max`, ...)
//! pass through (heartbeat 30 s and `frame_max` 131072 when none is given);
//! ours are taken out before lapin sees the URL:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `prefix` | `action_event.` | put before every queue and exchange name, so several apps share a vhost |
//! | `publish_timeout` | `30s` | how long a `publish` waits for the broker during an outage before it fails |
//! | `prefetch` | `32` | unacked deliveries per queue consumer (see *Strict priority*) |
//! | `consumer_timeout` | `30m` | the broker's `consumer_timeout`: an event still running after a third of it is moved to a fresh delivery (see *Long events*) |
//! | `cacertfile` | none | `amqps://` only: a PEM file of CA certificates trusted besides the system's |
//!
//! `frame_max` is given explicitly because lapin sizes each connection's
//! read and write buffers (32 frames each) from it: without it, lapin starts
//! them at 32 x 4 KiB and, once the broker offers 128 KiB, grows them by
//! writing 4 MiB of zeros each, 8 MiB of touched memory per connection (a
//! poller has three) before the first event. Told up front, lapin allocates
//! the same 4 MiB zeroed by the OS and only touches what traffic uses.

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;

use crate::{Error, redact_url};

/// Queue-name prefix used when the URL has no `prefix` option.
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_PREFIX, "action_event.");
/// ```
pub const DEFAULT_PREFIX: &str = "action_event.";
/// How long `publish` waits during an outage when the URL has no `publish_timeout`.
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_PUBLISH_TIMEOUT.as_secs(), 30);
/// ```
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Unacked deliveries per queue consumer when the URL has no `prefetch`.
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_PREFETCH, 32);
/// ```
pub const DEFAULT_PREFETCH: u16 = 32;
/// The broker's `consumer_timeout` assumed when the URL has none
/// (RabbitMQ's default, 30 minutes). Events still running after a third of
/// it are renewed (see the module docs).
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_CONSUMER_TIMEOUT.as_secs(), 30 * 60);
/// ```
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `frame_max` asked of the broker when the URL has none (RabbitMQ's default).
const DEFAULT_FRAME_MAX: u32 = 131_072;

/// The URL, parsed: what lapin gets, and our options.
pub(super) struct Options {
    pub(super) lapin_url: String,
    /// TLS settings for `amqps://` (extra trusted CAs from `cacertfile`).
    pub(super) tls: OwnedTLSConfig,
    pub(super) prefix: String,
    pub(super) publish_timeout: Duration,
    pub(super) prefetch: u16,
    pub(super) consumer_timeout: Duration,
}

pub(super) fn parse_url(url: &str) -> Result<Options, Error> {
    let bad = |message: String| Error::BadUrl {
        url: redact_url(url),
        message,
    };
    let mut u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if u.scheme() != "amqp" && u.scheme() != "amqps" {
        return Err(bad(format!(
            "expected `amqp://` or `amqps://`, got `{}://`",
            u.scheme()
        )));
    }
    #[cfg(not(feature = "tls"))]
    if u.scheme() == "amqps" {
        return Err(crate::broker::feature_off(url, "tls"));
    }
    let mut prefix = DEFAULT_PREFIX.to_string();
    let mut publish_timeout = DEFAULT_PUBLISH_TIMEOUT;
    let mut prefetch = DEFAULT_PREFETCH;
    let mut consumer_timeout = DEFAULT_CONSUMER_TIMEOUT;
    let mut tls = OwnedTLSConfig::default();
    let mut rest: Vec<(String, String)> = Vec::new();
    let mut has_heartbeat = false;
    let mut has_frame_max = false;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "prefix" => prefix = v.into_owned(),
            "publish_timeout" => {
                publish_timeout = humantime::parse_duration(&v)
                    .map_err(|e| bad(format!("`publish_timeout={v}`: {e} (e.g. `30s`)")))?;
            }
            "prefetch" => {
                prefetch = v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    bad(format!("`prefetch={v}`: expected a number from 1 to 65535"))
                })?;
            }
            "consumer_timeout" => {
                consumer_timeout = humantime::parse_duration(&v)
                    .ok()
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or_else(|| {
                        bad(format!(
                            "`consumer_timeout={v}`: expected the broker's consumer_timeout, at least 1s (e.g. `30m`)"
                        ))
                    })?;
            }
            "cacertfile" => {
                if u.scheme() != "amqps" {
                    return Err(bad(format!(
                        "`cacertfile` needs an `amqps://` URL, got `{}://`",
                        u.scheme()
                    )));
                }
                tls.cert_chain = Some(read_ca_file(&v).map_err(bad)?);
            }
            other => {
                has_heartbeat |= other == "heartbeat";
                has_frame_max |= other == "frame_max";
                rest.push((k.into_owned(), v.into_owned()));
            }
        }
    }
    if !has_heartbeat {
        rest.push(("heartbeat".into(), "30".into()));
    }
    if !has_frame_max {
        // RabbitMQ's own default; see the module docs for why it is spelled out.
        rest.push(("frame_max".into(), DEFAULT_FRAME_MAX.to_string()));
    }
    if prefix.len() > 200 {
        return Err(bad("`prefix` is longer than 200 bytes".into()));
    }
    u.set_query(None);
    u.query_pairs_mut().extend_pairs(rest);
    Ok(Options {
        lapin_url: u.to_string(),
        tls,
        prefix,
        publish_timeout,
        prefetch,
        consumer_timeout,
    })
}

/// The PEM text of a `cacertfile`, checked to hold at least one certificate
/// (rustls would silently ignore a file without any).
fn read_ca_file(path: &str) -> Result<String, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("`cacertfile={path}`: cannot read it: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "`cacertfile={path}`: no PEM certificate in it (expected `-----BEGIN CERTIFICATE-----`)"
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_taken_out() {
        let c = parse_url(
            "amqp://u:p@h:5672/%2f?prefix=x.&publish_timeout=2s&prefetch=7&frame_max=8192",
        )
        .expect("valid");
        assert_eq!(c.prefix, "x.");
        assert_eq!(c.publish_timeout, Duration::from_secs(2));
        assert_eq!(c.prefetch, 7);
        assert_eq!(
            c.lapin_url,
            "amqp://u:p@h:5672/%2f?frame_max=8192&heartbeat=30"
        );
        let c = parse_url("amqp://h/%2f?heartbeat=5").expect("valid");
        assert_eq!(c.lapin_url, "amqp://h/%2f?heartbeat=5&frame_max=131072");
        assert_eq!(c.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn consumer_timeout_option() {
        let c = parse_url("amqp://h/%2f?consumer_timeout=45m&prefix=x.").expect("valid");
        assert_eq!(c.consumer_timeout, Duration::from_secs(45 * 60));
        assert_eq!(c.lapin_url, "amqp://h/%2f?heartbeat=30&frame_max=131072");
        assert_eq!(
            parse_url("amqp://h/%2f").expect("valid").consumer_timeout,
            DEFAULT_CONSUMER_TIMEOUT
        );
        for bad in ["soon", "0s", "500ms"] {
            let e = parse_url(&format!("amqp://u:secret@h/%2f?consumer_timeout={bad}"))
                .err()
                .expect("error");
            assert!(e.to_string().contains("consumer_timeout"), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn cacertfile_is_read_and_taken_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(&ca, pem).expect("write");
        let c = parse_url(&format!(
            "amqps://u:p@h/%2f?cacertfile={}&prefix=x.",
            ca.display()
        ))
        .expect("valid");
        assert_eq!(c.tls.cert_chain.as_deref(), Some(pem));
        assert_eq!(
            c.lapin_url,
            "amqps://u:p@h/%2f?heartbeat=30&frame_max=131072"
        );
        assert!(
            parse_url("amqps://u:p@h/%2f")
                .expect("valid")
                .tls
                .cert_chain
                .is_none()
        );
    }

    #[test]
    fn bad_urls_are_redacted() {
        let e = parse_url("amqp://u:secret@h/%2f?prefetch=0")
            .err()
            .expect("error");
        let text = e.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("prefetch"), "{text}");
        assert!(parse_url("amqp://u:secret@h/?publish_timeout=soon").is_err());
    }
}
