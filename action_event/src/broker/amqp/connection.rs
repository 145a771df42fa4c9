//! Connecting: TLS, the probe, the connection watcher, and broker round
//! trips with a timeout ([`op`]).
//!
//! # TLS (`amqps://`)
//!
//! rustls (ring), with lapin's `rustls-native-certs` store: the server's
//! certificate must chain to a CA the system trusts and name the URL's host.
//! A private CA is trusted by `cacertfile=/path/ca.pem` (added to the system
//! roots, passed to lapin as `OwnedTLSConfig::cert_chain`), or by the
//! environment variable `SSL_CERT_FILE=/path/ca.pem` (or `SSL_CERT_DIR`),
//! which rustls-native-certs reads *instead of* the system store. Port 5671
//! when the URL has none. No client certificate is sent.
//!
//! [`AmqpBroker::open`](super::AmqpBroker::open) first opens the transport once (TCP, and the TLS
//! handshake for `amqps://`), and so does every later `amqps://` connection
//! that lapin will recover: lapin retries a failing connect forever once
//! recovery is on, so without this probe a wrong port or an untrusted
//! certificate would hang `open` and leave a retrying thread behind. With it the error names the cause, e.g. `TLS handshake with
//! mq.example.com:5671 failed: invalid peer certificate: UnknownIssuer`, with
//! a hint at `cacertfile`/`SSL_CERT_FILE`, and the URL's password redacted.
//!
//! # Connection loss
//!
//! `take` never fails for a transient loss: it waits and returns `Ok(None)`
//! after `wait`. An ack or release whose connection is gone is not sent,
//! and never waited for: the broker has requeued that event and delivers it
//! again (at-least-once; it ran and will run again). They are counted, and
//! logged once, as one WARN line with the count, when a stopping poller has
//! settled its last event (or at `close`).
//!
//! The consume side rebuilds its connection itself (see
//! `consume::generation`), and so does the status loop (see `status`); the
//! publish side uses lapin's recovery (see `publish`), with pauses of
//! 200-400 ms (plus up to 100 % jitter) between attempts. How long the two
//! that rebuild by themselves wait, and what the log says about a loss, is
//! in `recover`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};

use super::Inner;
use super::options::Options;
use super::recover::{PROBE_EVERY, RETRY_MIN, Role};
use crate::Error;

/// How long [`probe`] waits for the socket (and the TLS handshake).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A single broker round trip that takes longer than this counts as lost.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// A topology failure: `Fatal` is a configuration problem (reported),
/// `Transient` a connection problem (retried).
pub(super) enum TopoErr {
    Fatal(Error),
    Transient(String),
}

/// Rewords a broker error; `PRECONDITION_FAILED - inequivalent arg` names
/// the queue and the argument that differs.
fn describe_amqp_error(e: &lapin::Error) -> String {
    if let ErrorKind::ProtocolError(amqp) = e.kind() {
        let text = amqp.get_message().as_str();
        if let Some(rest) = text.split("inequivalent arg '").nth(1) {
            let arg = rest.split('\'').next().unwrap_or("?");
            let (kind, name) = ["queue", "exchange"]
                .iter()
                .find_map(|k| {
                    let marker = format!(" for {k} '");
                    let after = rest.split(marker.as_str()).nth(1)?;
                    Some((*k, after.split('\'').next().unwrap_or("?")))
                })
                .unwrap_or(("queue", "?"));
            let detail = text
                .split("in vhost '")
                .nth(1)
                .and_then(|s| s.split_once("': "))
                .map(|(_, d)| d)
                .unwrap_or("");
            if arg == "x-queue-type" {
                return format!(
                    "queue `{name}` already exists with another queue type ({detail}), and a queue's \
                     type cannot change: the URL's `queue_type` does not match the queues this prefix \
                     already has. To move to quorum queues without losing events, give the new URL \
                     (`queue_type=quorum`) a new `prefix`, move producers and pollers to it, and keep \
                     one poller on the old URL until its queues are empty (README: *Moving from \
                     classic to quorum queues*)"
                );
            }
            return format!(
                "{kind} `{name}` already exists with different arguments: `{arg}` differs ({detail}); \
                 delete the {kind} or use another `prefix` in the URL"
            );
        }
        return format!("broker refused: {text}");
    }
    e.to_string()
}

fn is_fatal(e: &lapin::Error) -> bool {
    e.is_amqp_error()
        && !matches!(
            e.kind(),
            ErrorKind::ProtocolError(a) if a.get_id() == 320 || a.get_id() == 541
        )
}

/// Why [`probe`] failed.
pub(super) struct ProbeError {
    /// The TLS handshake failed (the socket connected): retrying will not help.
    pub(super) tls: bool,
    pub(super) message: String,
}

/// Opens the transport once (TCP, plus the TLS handshake for `amqps://`)
/// and drops it, waiting at most [`PROBE_TIMEOUT`] (see [`probe_within`]).
pub(super) async fn probe(lapin_url: &str, tls: &OwnedTLSConfig) -> Result<(), ProbeError> {
    probe_within(lapin_url, tls, PROBE_TIMEOUT).await
}

/// Opens the transport once (TCP, plus the TLS handshake for `amqps://`)
/// and drops it. lapin retries a connect forever once recovery is on (a
/// refused socket, an untrusted certificate), in an I/O thread that outlives
/// any timeout put on the connect: probing first makes a wrong host or port,
/// or a certificate that is not trusted, fail at once with its own error.
async fn probe_within(
    lapin_url: &str,
    tls: &OwnedTLSConfig,
    within: Duration,
) -> Result<(), ProbeError> {
    let fail = |tls: bool, message: String| ProbeError { tls, message };
    use lapin::tcp::AMQPUriTcpExt;
    let uri: lapin::uri::AMQPUri = lapin_url.parse().map_err(|e| fail(false, e))?;
    let at = format!("{}:{}", uri.authority.host, uri.authority.port);
    let runtime = lapin::runtime::default_runtime().map_err(|e| fail(false, e.to_string()))?;
    let stream = uri.connect_with_config_async(tls.as_ref(), &runtime);
    match tokio::time::timeout(within, stream).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let tls_failed = uri.scheme == lapin::uri::AMQPScheme::AMQPS
                && !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::AddrNotAvailable
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                );
            if !tls_failed {
                return Err(fail(false, format!("cannot connect to {at}: {e}")));
            }
            let hint = if e.to_string().contains("certificate") {
                "; to trust a private CA, add `cacertfile=/path/to/ca.pem` to the URL \
                 or set SSL_CERT_FILE"
            } else {
                ""
            };
            Err(fail(
                true,
                format!("TLS handshake with {at} failed: {e}{hint}"),
            ))
        }
        Err(_) => Err(fail(
            false,
            format!("cannot connect to {at}: no answer in {within:?}"),
        )),
    }
}

/// [`probe`]s every host of the URL in turn, starting with the one that
/// answered last; Ok as soon as one answers (and it becomes the one tried
/// first), else the first host's error (all of them when there are several).
pub(super) async fn probe_any(opts: &Options) -> Result<(), ProbeError> {
    probe_hosts(opts, PROBE_TIMEOUT).await
}

async fn probe_hosts(opts: &Options, within: Duration) -> Result<(), ProbeError> {
    let n = opts.hosts.len();
    let start = opts.host_cursor.load(Ordering::Relaxed) % n.max(1);
    let mut errors: Vec<ProbeError> = Vec::new();
    for i in 0..n {
        let idx = (start + i) % n;
        match probe_within(&opts.hosts[idx], &opts.tls, within).await {
            Ok(()) => {
                opts.host_cursor.store(idx, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.len() <= 1 {
        return Err(errors.pop().unwrap_or(ProbeError {
            tls: false,
            message: "no host in the URL".into(),
        }));
    }
    Err(ProbeError {
        tls: errors.iter().all(|e| e.tls),
        message: format!(
            "no node of the cluster answers: {}",
            errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

pub(super) async fn op<T>(
    what: &str,
    fut: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, TopoErr> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if is_fatal(&e) => Err(TopoErr::Fatal(Error::broker(
            "",
            format!("{what}: {}", describe_amqp_error(&e)),
        ))),
        Ok(Err(e)) => Err(TopoErr::Transient(format!("{what}: {e}"))),
        Err(_) => Err(TopoErr::Transient(format!(
            "{what}: no answer in {OP_TIMEOUT:?}"
        ))),
    }
}

impl Inner {
    pub(super) async fn connect(&self, role: &str) -> Result<Connection, String> {
        self.connect_with(role, true).await
    }

    /// A connection to the first host of the URL that takes one, starting
    /// with the one that answered last (see `options`, *Several hosts*);
    /// with `recover` and a single host, lapin's automatic recovery is on
    /// (with several it is not: it would only reconnect to the same node).
    pub(super) async fn connect_with(
        &self,
        role: &str,
        recover: bool,
    ) -> Result<Connection, String> {
        let n = self.opts.hosts.len();
        if n <= 1 {
            return self.connect_to(&self.opts.lapin_url, role, recover).await;
        }
        let start = self.opts.host_cursor.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = &self.opts.hosts[idx];
            // A dead node refuses at once; a probe keeps a hung one from
            // costing `OP_TIMEOUT`.
            if let Err(e) = probe_within(url, &self.opts.tls, PROBE_TIMEOUT).await {
                errors.push(e.message);
                continue;
            }
            match self.connect_to(url, role, false).await {
                Ok(c) => {
                    self.opts.host_cursor.store(idx, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "no node of the cluster takes a connection: {}",
            errors.join("; ")
        ))
    }

    async fn connect_to(
        &self,
        lapin_url: &str,
        role: &str,
        recover: bool,
    ) -> Result<Connection, String> {
        let mut props = ConnectionProperties::default().with_connection_name(
            format!(
                "action_event {role} {} pid {}",
                self.opts.prefix,
                std::process::id()
            )
            .into(),
        );
        if recover {
            props = props.enable_auto_recover().configure_backoff(|b| {
                b.without_max_times()
                    .with_jitter()
                    .with_min_delay(RETRY_MIN)
                    .with_max_delay(RETRY_MIN * 2)
            });
        }
        // A TLS failure would make lapin retry forever (see `probe`); a
        // socket that does not connect yet is left to lapin's retries, as for
        // `amqp://`.
        if recover
            && lapin_url.starts_with("amqps:")
            && let Err(e) = probe(lapin_url, &self.opts.tls).await
            && e.tls
        {
            return Err(e.message);
        }
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let connect =
            Connection::connect_with_config(lapin_url, props, self.opts.tls.clone(), runtime);
        match tokio::time::timeout(OP_TIMEOUT, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(describe_amqp_error(&e)),
            Err(_) => Err(format!("no answer in {OP_TIMEOUT:?}")),
        }
    }

    pub(super) async fn confirm_channel(&self, conn: &Connection) -> Result<Channel, String> {
        let ch = tokio::time::timeout(OP_TIMEOUT, conn.create_channel())
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            OP_TIMEOUT,
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(ch)
    }

    /// A channel of `conn` in transaction mode (`tx.select`): the periodic
    /// lease's (see `tick`).
    pub(super) async fn tx_channel(&self, conn: &Connection) -> Result<Channel, String> {
        let ch = tokio::time::timeout(OP_TIMEOUT, conn.create_channel())
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(OP_TIMEOUT, ch.tx_select())
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(ch)
    }

    /// Whether the broker (any node of the URL) answers now: a probe that
    /// waits at most 200 ms per host.
    pub(super) async fn reachable(&self) -> bool {
        probe_hosts(&self.opts, PROBE_EVERY).await.is_ok()
    }

    /// Reports the loss of `conn` to the [`Link`](super::recover::Link) as a loss of `role` (and
    /// clears `alive`), and blocks; with `epoch` (lapin recovery), reports
    /// its reconnects and bumps `epoch` on each. (lapin sends the errors of
    /// its channels here too, e.g. one the broker closed for
    /// `consumer_timeout`: those are no loss.)
    pub(super) fn watch(
        &self,
        conn: &Arc<Connection>,
        role: Role,
        epoch: Option<Arc<AtomicU64>>,
        alive: Option<Arc<AtomicBool>>,
    ) {
        let mut events = conn.events_listener();
        let link = self.link.clone();
        // Weak: the watcher must not keep a dropped connection open.
        let weak = Arc::downgrade(conn);
        tokio::spawn(async move {
            // The first `Connected` may be the initial connection's (it is
            // sent just after `connect` resolves): only one that follows an
            // error is a reconnect.
            let mut after_error = false;
            while let Some(ev) = events.next().await {
                match ev {
                    lapin::Event::Connected => {
                        if after_error && let Some(epoch) = &epoch {
                            epoch.fetch_add(1, Ordering::SeqCst);
                            link.back(role);
                        }
                        after_error = false;
                    }
                    lapin::Event::Error(e) => {
                        // lapin marks the connection before it sends its error.
                        let Some(conn) = weak.upgrade() else { break };
                        if conn.status().connected() {
                            tracing::debug!(error = %e, role = role.name(), "RabbitMQ channel error");
                            continue;
                        }
                        after_error = true;
                        if let Some(alive) = &alive {
                            alive.store(false, Ordering::SeqCst);
                        }
                        link.lost(role, &e);
                    }
                    lapin::Event::ConnectionBlocked(r) => {
                        tracing::warn!(reason = %r, "RabbitMQ blocked publishing")
                    }
                    _ => {}
                }
            }
        });
    }
}
