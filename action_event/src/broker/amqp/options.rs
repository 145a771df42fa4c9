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
//! | `queue_type` | `classic` | `quorum`: every durable queue is a Raft-replicated quorum queue (see *Quorum queues* below) |
//! | `delivery_limit` | `20` | `queue_type=quorum` only: an event delivered this many times without being settled (its poller died each time) is dead; `off` turns it off |
//! | `management` | none | `queue_type=quorum` only: RabbitMQ's management API, `http://host:15672` (several comma-separated for a cluster), for the stall check (see *Stalled dead-lettering* below) |
//!
//! # Several hosts (a cluster)
//!
//! The authority may list several nodes, comma-separated:
//! `amqp://user:pass@node1:5672,node2:5673,node3/%2f?queue_type=quorum`
//! (a host without a port gets the scheme's default port; the user,
//! password, vhost and options are shared). Every connection (publish,
//! consume, status) goes to the first node that answers, starting from
//! the one that worked last; when its node dies it moves to the next live
//! one with the usual back-off. With one host nothing changes: the publish
//! connection keeps lapin's own recovery. With several it does not (lapin
//! would only ever reconnect to the node that died): this backend rebuilds
//! it, on whichever node answers.
//!
//! # Quorum queues
//!
//! With `queue_type=quorum` the work queues, the dead queue, the delay
//! ladder and the hold queues of long events are declared with
//! `x-queue-type=quorum`; the delay ladder and the hold queues dead-letter
//! with `x-dead-letter-strategy=at-least-once` (and the
//! `x-overflow=reject-publish` it needs), so an event on its way back to
//! its work queue survives the death of a node. The status queues stay
//! classic: they are exclusive, auto-deleted and hold only pings (a quorum
//! queue cannot be exclusive), and losing one loses a ping, never an event.
//! Strict priority is one queue per priority (no `x-max-priority`, which
//! quorum queues lack on RabbitMQ 3.10), so it is the same on both types.
//!
//! # Stalled dead-lettering
//!
//! RabbitMQ 3.10 can stall a quorum queue's dead-letter worker for good
//! when the node leading the *target* work queue dies while events are on
//! their way to it: the events stay in their delay or hold queue, counted
//! in `messages` but neither ready nor unacked, and do not run until that
//! queue's leadership moves. AMQP cannot see them; the management API can.
//! With `management=http://host:15672` a poller looks every 10 s and logs
//! a WARN naming the queue, the count and the fix once it has held for
//! 20 s (again every 5 minutes, and an INFO when it clears); `poller
//! status` and the dashboard show it too (`Broker::broker_health`). The
//! credentials are the AMQP URL's unless the management URL has its own
//! (a user with the `monitoring` tag is enough); plain `http://` only.
//! Without the option the check is off, and the poller says so once at
//! start. See `stall` and `management`.
//!
//! A queue's type cannot change: declaring an existing classic queue as
//! quorum fails with an error naming the queue and the way to migrate (a
//! new `prefix`; see the README, *Moving from classic to quorum queues*).
//!
//! `frame_max` is given explicitly because lapin sizes each connection's
//! read and write buffers (32 frames each) from it: without it, lapin starts
//! them at 32 x 4 KiB and, once the broker offers 128 KiB, grows them by
//! writing 4 MiB of zeros each, 8 MiB of touched memory per connection (a
//! poller has three) before the first event. Told up front, lapin allocates
//! the same 4 MiB zeroed by the OS and only touches what traffic uses.

use std::sync::atomic::AtomicUsize;
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

/// Deliveries without a settlement after which a quorum queue's event is
/// dead, when the URL has no `delivery_limit` (RabbitMQ 4.0's own default).
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_DELIVERY_LIMIT, 20);
/// ```
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The type of every durable queue the backend declares (URL option
/// `queue_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QueueType {
    Classic,
    Quorum,
}

/// `frame_max` asked of the broker when the URL has none (RabbitMQ's default).
const DEFAULT_FRAME_MAX: u32 = 131_072;

/// The URL, parsed: what lapin gets, and our options.
pub(super) struct Options {
    /// The first host's URL, as lapin gets it.
    pub(super) lapin_url: String,
    /// Every host's URL, as lapin gets it (one unless the URL lists several).
    pub(super) hosts: Vec<String>,
    /// Index into `hosts` of the node that answered last: connections try
    /// it first.
    pub(super) host_cursor: AtomicUsize,
    pub(super) queue_type: QueueType,
    /// `queue_type=quorum` only: deliveries after which an event is dead.
    pub(super) delivery_limit: Option<u32>,
    /// TLS settings for `amqps://` (extra trusted CAs from `cacertfile`).
    pub(super) tls: OwnedTLSConfig,
    pub(super) prefix: String,
    pub(super) publish_timeout: Duration,
    pub(super) prefetch: u16,
    pub(super) consumer_timeout: Duration,
    /// `management=`: the management API, for the stall check.
    pub(super) management: Option<super::management::Management>,
}

pub(super) fn parse_url(url: &str) -> Result<Options, Error> {
    let bad = |message: String| Error::BadUrl {
        url: redact_url(url),
        message,
    };
    let (first, others) = split_hosts(url).map_err(&bad)?;
    let mut u = url::Url::parse(&first).map_err(|e| bad(e.to_string()))?;
    if u.scheme() != "amqp" && u.scheme() != "amqps" {
        return Err(bad(format!(
            "expected `amqp://` or `amqps://`, got `{}://`",
            u.scheme()
        )));
    }
    #[cfg(not(feature = "tls"))]
    if u.scheme() == "amqps" {
        return Err(crate::broker::connect::feature_off(url, "tls"));
    }
    let mut prefix = DEFAULT_PREFIX.to_string();
    let mut publish_timeout = DEFAULT_PUBLISH_TIMEOUT;
    let mut prefetch = DEFAULT_PREFETCH;
    let mut consumer_timeout = DEFAULT_CONSUMER_TIMEOUT;
    let mut tls = OwnedTLSConfig::default();
    let mut queue_type = QueueType::Classic;
    let mut delivery_limit: Option<Option<u32>> = None;
    let mut management: Option<String> = None;
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
            "queue_type" => {
                queue_type = match v.as_ref() {
                    "classic" => QueueType::Classic,
                    "quorum" => QueueType::Quorum,
                    _ => {
                        return Err(bad(format!(
                            "`queue_type={v}`: expected `classic` or `quorum`"
                        )));
                    }
                };
            }
            "delivery_limit" => {
                delivery_limit = Some(match v.as_ref() {
                    "off" => None,
                    n => Some(n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad(format!(
                            "`delivery_limit={v}`: expected a number of deliveries, at least 1, or `off`"
                        ))
                    })?),
                });
            }
            "management" => management = Some(v.into_owned()),
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
    let delivery_limit = match (queue_type, delivery_limit) {
        (QueueType::Quorum, None) => Some(DEFAULT_DELIVERY_LIMIT),
        (QueueType::Quorum, Some(limit)) => limit,
        (QueueType::Classic, None) => None,
        (QueueType::Classic, Some(_)) => {
            return Err(bad(
                "`delivery_limit` needs `queue_type=quorum` (classic queues do not count deliveries)"
                    .into(),
            ));
        }
    };
    let management = match management {
        None => None,
        Some(_) if queue_type != QueueType::Quorum => {
            return Err(bad(
                "`management` needs `queue_type=quorum` (the stall it watches for is in quorum queues' at-least-once dead-lettering)"
                    .into(),
            ));
        }
        Some(v) => Some(super::management::parse(&v, &u).map_err(&bad)?),
    };
    u.set_query(None);
    u.query_pairs_mut().extend_pairs(&rest);
    let mut hosts = vec![u.to_string()];
    for other in others {
        let mut o = url::Url::parse(&other).map_err(|e| bad(e.to_string()))?;
        o.set_query(None);
        o.query_pairs_mut().extend_pairs(&rest);
        hosts.push(o.to_string());
    }
    Ok(Options {
        lapin_url: u.to_string(),
        hosts,
        host_cursor: AtomicUsize::new(0),
        queue_type,
        delivery_limit,
        tls,
        prefix,
        publish_timeout,
        prefetch,
        consumer_timeout,
        management,
    })
}

/// Splits `amqp://user:pass@h1:1,h2:2/vhost?q` into one URL per host: the
/// first, and the others (the user, vhost and query are shared).
fn split_hosts(url: &str) -> Result<(String, Vec<String>), String> {
    let Some(scheme_end) = url.find("://") else {
        return Ok((url.to_string(), Vec::new()));
    };
    let head = &url[..scheme_end + 3];
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    if !hostlist.contains(',') {
        return Ok((url.to_string(), Vec::new()));
    }
    let mut urls = Vec::new();
    for host in hostlist.split(',') {
        if host.trim().is_empty() {
            return Err(format!(
                "an empty host in the host list `{hostlist}` (expected `host1:port1,host2:port2`)"
            ));
        }
        urls.push(format!("{head}{userinfo}{}{tail}", host.trim()));
    }
    let first = urls.remove(0);
    Ok((first, urls))
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
    fn several_hosts_share_user_vhost_and_options() {
        let c =
            parse_url("amqp://u:p@h1:5672,h2:5673, h3/v?queue_type=quorum&prefix=x.&heartbeat=5")
                .expect("valid");
        assert_eq!(
            c.hosts,
            [
                "amqp://u:p@h1:5672/v?heartbeat=5&frame_max=131072",
                "amqp://u:p@h2:5673/v?heartbeat=5&frame_max=131072",
                "amqp://u:p@h3/v?heartbeat=5&frame_max=131072",
            ]
        );
        assert_eq!(c.lapin_url, c.hosts[0]);
        assert_eq!(c.prefix, "x.");
        assert_eq!(c.queue_type, QueueType::Quorum);
        let one = parse_url("amqp://u:p@h1:5672/%2f").expect("valid");
        assert_eq!(one.hosts.len(), 1);
        assert_eq!(one.hosts[0], one.lapin_url);
        let e = parse_url("amqp://u:secret@h1,,h2/%2f")
            .err()
            .expect("error");
        assert!(e.to_string().contains("empty host"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = parse_url("amqp://u:secret@h1,h2:notaport/%2f")
            .err()
            .expect("error");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn queue_type_and_delivery_limit() {
        let c = parse_url("amqp://h/%2f").expect("valid");
        assert_eq!((c.queue_type, c.delivery_limit), (QueueType::Classic, None));
        let c = parse_url("amqp://h/%2f?queue_type=quorum").expect("valid");
        assert_eq!(
            (c.queue_type, c.delivery_limit),
            (QueueType::Quorum, Some(DEFAULT_DELIVERY_LIMIT))
        );
        assert_eq!(c.lapin_url, "amqp://h/%2f?heartbeat=30&frame_max=131072");
        let c = parse_url("amqp://h/%2f?queue_type=quorum&delivery_limit=3").expect("valid");
        assert_eq!(c.delivery_limit, Some(3));
        let c = parse_url("amqp://h/%2f?queue_type=quorum&delivery_limit=off").expect("valid");
        assert_eq!(c.delivery_limit, None);
        for (url, needle) in [
            ("amqp://h/%2f?queue_type=mirrored", "queue_type=mirrored"),
            (
                "amqp://h/%2f?queue_type=quorum&delivery_limit=0",
                "delivery_limit=0",
            ),
            ("amqp://h/%2f?delivery_limit=5", "needs `queue_type=quorum`"),
        ] {
            let e = parse_url(url).err().expect("error");
            assert!(e.to_string().contains(needle), "{url}: {e}");
        }
    }

    #[test]
    fn management_option() {
        assert!(
            parse_url("amqp://h/%2f?queue_type=quorum")
                .expect("valid")
                .management
                .is_none()
        );
        let c = parse_url(
            "amqp://u:p@h1,h2/%2f?queue_type=quorum&management=http://h1:15672,http://h2:15672",
        )
        .expect("valid");
        let m = c.management.expect("management");
        assert_eq!(m.endpoints.len(), 2);
        assert_eq!(m.endpoints[1].shown(), "http://h2:15672");
        assert_eq!(
            c.lapin_url,
            "amqp://u:p@h1/%2f?heartbeat=30&frame_max=131072"
        );
        for (url, needle) in [
            (
                "amqp://u:secret@h/%2f?management=http://h:15672",
                "needs `queue_type=quorum`",
            ),
            (
                "amqp://u:secret@h/%2f?queue_type=quorum&management=https://h:15671",
                "https is not supported",
            ),
        ] {
            let e = parse_url(url).err().expect("error");
            assert!(e.to_string().contains(needle), "{url}: {e}");
            assert!(!e.to_string().contains("secret"), "{url}: {e}");
        }
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
