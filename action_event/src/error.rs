//! The library's error type.

use std::fmt;

/// Everything that can go wrong inside action_event itself: queueing, the
/// broker, the registry, params that do not fit an event.
///
/// The library's own functions return it ([`crate::Result`]). Handlers and
/// filters return [`crate::prelude::Result`], whose error is
/// [`anyhow::Error`], so `?` works on any error there, this one included.
///
/// ```
/// use action_event::Error;
/// let e = Error::Params {
///     event: "hello_world".into(),
///     path: "name".into(),
///     message: "invalid type: integer `5`, expected a string".into(),
/// };
/// assert_eq!(
///     e.to_string(),
///     "event `hello_world`: params do not fit at `name`: invalid type: integer `5`, expected a string"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Params that do not deserialize into the event's struct.
    #[error("event `{event}`: params do not fit at `{path}`: {message}")]
    Params {
        /// The event name.
        event: String,
        /// The field path inside the params (`.` for the params themselves).
        path: String,
        /// What serde said.
        message: String,
    },
    /// `cx.param("key")` on a key the event was not queued with.
    #[error("event `{event}`: missing param `{key}`")]
    MissingParam {
        /// The event name.
        event: String,
        /// The key asked for.
        key: String,
    },
    /// `cx.state::<T>()` for a type the poller was not given.
    #[error(
        "state `{type_name}` was not provided: give it to the poller: `action_event::poller::main(State::new().with(value))` (or `Poller::new(broker, state, config)`)"
    )]
    MissingState {
        /// `std::any::type_name` of the missing type.
        type_name: &'static str,
    },
    /// An event name no handler in this binary knows: at the `queue!` call
    /// (a typo, or a binary that does not link the crate of its events), or
    /// in a poller. The message names the fix: the `use my_events as _;`
    /// a binary with no events lacks, the known name nearest a typo, and
    /// [`crate::QueueRequest::foreign`] for another service's event.
    ///
    /// ```
    /// use action_event::Error;
    /// let e = Error::UnknownEvent { name: "invoise".into(), known: vec!["invoice".into(), "refund".into()] };
    /// assert!(e.to_string().starts_with("unknown event `invoise`: did you mean `invoice`?"), "{e}");
    /// let e = Error::UnknownEvent { name: "invoice".into(), known: vec![] };
    /// assert!(e.to_string().contains("add `use my_events as _;`"), "{e}");
    /// ```
    #[error("unknown event `{name}`: {}", unknown_help(.name, .known))]
    UnknownEvent {
        /// The name asked for.
        name: String,
        /// Every event this binary knows.
        known: Vec<String>,
    },
    /// A `queue!` argument that cannot be used.
    #[error("event `{event}`: {message}")]
    Queue {
        /// The event name.
        event: String,
        /// What is wrong.
        message: String,
    },
    /// A message that is not a valid envelope.
    #[error("invalid envelope: {0}")]
    Envelope(String),
    /// The registry of events could not be built.
    #[error("event registry: {0}")]
    Registry(String),
    /// A broker URL that is malformed or names an unknown scheme.
    #[error("broker URL `{url}`: {message}")]
    BadUrl {
        /// The URL with its password redacted.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The broker failed or cannot be reached. `source` is the cause:
    /// lapin's, rusqlite's or the OS's error where the broker had one, else
    /// a message; [`Error::is_transient`] reads it.
    #[error("broker `{url}`: {source}")]
    Broker {
        /// The URL with its password redacted.
        url: String,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// `queue!` (or [`crate::QueueRequest::send`]) fell through to the
    /// process's global client while [`crate::testing::fake`] or
    /// [`crate::testing::inline`] is active somewhere in this process: the
    /// event would have left the test for a real broker.
    #[error(
        "event `{event}`: queued outside the test mode: a `testing::fake()` / `testing::inline()` is active in this process, but this task does not carry it (a task spawned onto another thread of a multi-thread runtime, `spawn_blocking`, a thread of its own), so the event would reach a real broker. Wrap the task's future: `tokio::spawn(fake.scope(async move {{ ... }}))`; to reach a real broker on purpose beside a test mode, queue through an explicit `Client` (`client.send(req)` or `client.scope(fut)`)"
    )]
    OutsideTestMode {
        /// The event name.
        event: String,
    },
    /// A dead letter that does not exist.
    #[error("no dead event with id `{0}`")]
    NoSuchDeadEvent(String),
    /// `poller generate` cannot do what it was asked; nothing was written.
    #[error("generate: {0}")]
    Generate(String),
    /// An event run in place by [`crate::testing::inline`] failed (an `Err`,
    /// a panic, a timeout, or a name no handler knows).
    #[error("{message}")]
    Inline {
        /// The event name.
        event: String,
        /// What went wrong, naming the event.
        message: String,
    },
    /// An I/O error (PID files, log files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A boxed error that can cross threads: the cause inside [`Error::Broker`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

fn unknown_help(name: &str, known: &[String]) -> String {
    let foreign = format!(
        "for an event of another service, state its queue: `QueueRequest::foreign(\"{name}\").queue(\"...\")`"
    );
    if known.is_empty() {
        return format!(
            "this binary links no events: add `use my_events as _;` (the crate that defines them) to it, since the linker drops a crate of events the binary never names; {foreign}"
        );
    }
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match nearest(name, known) {
        Some(near) => format!("did you mean `{near}`? (this binary knows {list}; {foreign})"),
        None => format!("this binary knows {list}; {foreign}"),
    }
}

/// The known name nearest `name`, when it is near enough to be a typo.
fn nearest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k.as_str())
}

/// Edit distance by chars (optimal string alignment: an insertion, a
/// deletion, a substitution or a swap of two neighbours costs 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A message with the error that caused it: `context: source`, with the
/// source kept for [`Error::is_transient`] and `Error::source()`.
#[derive(Debug)]
struct Caused {
    context: String,
    source: BoxError,
}

impl fmt::Display for Caused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for Caused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A broker that cannot be reached, told by a message only (no typed cause).
#[derive(Debug)]
struct Unreachable(String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

impl Error {
    /// A broker error: `source` is the cause (lapin's, rusqlite's, an I/O
    /// error) or a message (`&str`, `String`).
    ///
    /// ```
    /// use std::io::{Error as IoError, ErrorKind};
    /// let e = action_event::Error::broker("amqp://h", IoError::from(ErrorKind::ConnectionRefused));
    /// assert!(e.is_transient());
    /// assert!(std::error::Error::source(&e).is_some());
    /// let e = action_event::Error::broker("sqlite://a.db", "schema version 9 is newer than this build");
    /// assert!(!e.is_transient());
    /// ```
    pub fn broker(url: &str, source: impl Into<BoxError>) -> Self {
        Error::Broker {
            url: url.to_string(),
            source: source.into(),
        }
    }

    /// A broker error with `context` in front of its typed cause: the
    /// message reads `context: source`, and the cause stays reachable.
    ///
    /// ```
    /// use std::io::{Error as IoError, ErrorKind};
    /// let e = action_event::Error::broker_caused("amqp://h", "cannot connect", IoError::from(ErrorKind::ConnectionReset));
    /// assert!(e.to_string().starts_with("broker `amqp://h`: cannot connect: "), "{e}");
    /// assert!(e.is_transient());
    /// ```
    pub fn broker_caused(
        url: &str,
        context: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::broker(
            url,
            Caused {
                context: context.into(),
                source: source.into(),
            },
        )
    }

    /// A broker that cannot be reached (so: transient), told by a message.
    ///
    /// ```
    /// let e = action_event::Error::broker_unreachable("amqp://h:5672", "cannot connect to h:5672: no answer in 5s");
    /// assert!(e.is_transient());
    /// assert_eq!(e.to_string(), "broker `amqp://h:5672`: cannot connect to h:5672: no answer in 5s");
    /// ```
    pub fn broker_unreachable(url: &str, message: impl Into<String>) -> Self {
        Error::broker(url, Unreachable(message.into()))
    }

    /// Whether trying again later may succeed: a broker that cannot be
    /// reached, a connection lost, a timeout, a database busy. A bad URL,
    /// params that do not fit, an unknown event, a broker that refuses
    /// (access, arguments) are not: retrying cannot help.
    ///
    /// The cause decides: the chain of sources is read for an I/O error of
    /// a network kind, a timeout, lapin's connection errors, SQLite's
    /// busy/locked; a broker error made of a message only is not transient
    /// unless made with [`Error::broker_unreachable`].
    ///
    /// ```
    /// use action_event::Error;
    /// assert!(Error::broker_unreachable("amqp://h", "connection refused").is_transient());
    /// assert!(!Error::BadUrl { url: "amqp://h".into(), message: "bad port".into() }.is_transient());
    /// assert!(!Error::UnknownEvent { name: "x".into(), known: vec![] }.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Broker { source, .. } => chain_is_transient(&**source),
            Error::Io { source, .. } => io_is_transient(source),
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

fn chain_is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cursor = Some(e);
    while let Some(e) = cursor {
        if e.is::<Unreachable>() || e.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_is_transient(io);
        }
        #[cfg(feature = "amqp")]
        if let Some(l) = e.downcast_ref::<lapin::Error>() {
            return lapin_is_transient(l);
        }
        #[cfg(feature = "postgres")]
        if let Some(s) = e.downcast_ref::<sqlx::Error>() {
            return crate::broker::postgres::transient::is_transient(s);
        }
        #[cfg(feature = "sqlite")]
        if let Some(r) = e.downcast_ref::<rusqlite::Error>() {
            return matches!(
                r.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            );
        }
        cursor = e.source();
    }
    false
}

pub(crate) fn io_is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::UnexpectedEof
            | K::Interrupted
            | K::WouldBlock
            | K::AddrNotAvailable
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

/// lapin: an I/O error, a missed heartbeat, a lost connection or channel
/// is transient; the broker's refusals (access, a queue declared with other
/// arguments) are not, except "connection forced" (320, a broker shutting
/// down) and "internal error" (541).
#[cfg(feature = "amqp")]
fn lapin_is_transient(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_)
        | K::MissingHeartbeatError
        | K::InvalidConnectionState(_)
        | K::InvalidChannelState(..)
        | K::InvalidChannel(_)
        | K::ChannelsLimitReached => true,
        K::ProtocolError(a) => a.get_id() == 320 || a.get_id() == 541,
        _ => false,
    }
}

/// Removes the password from a URL, for logs and errors, and from URLs in
/// its query (RabbitMQ's `management=http://user:pass@host:15672`).
///
/// ```
/// assert_eq!(
///     action_event::redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
///     "amqp://guest:***@127.0.0.1:5672/%2f"
/// );
/// assert_eq!(
///     action_event::redact_url("amqp://h/%2f?management=http://mon:secret@h:15672"),
///     "amqp://h/%2f?management=http://mon:***@h:15672"
/// );
/// assert_eq!(action_event::redact_url("sqlite://a.db"), "sqlite://a.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let head = redact_authority(&url[..scheme_end + 3], &rest[..authority_end]);
    let mut out = head;
    let mut tail = &rest[authority_end..];
    // URLs inside the query: their authority ends at the next `&` or `,` too.
    while let Some(i) = tail.find("://") {
        out.push_str(&tail[..i + 3]);
        tail = &tail[i + 3..];
        let end = tail.find(['/', '?', '#', '&', ',']).unwrap_or(tail.len());
        out.push_str(&redact_authority("", &tail[..end]));
        tail = &tail[end..];
    }
    out.push_str(tail);
    out
}

/// `prefix` + `authority` with the password of its userinfo replaced by `***`.
fn redact_authority(prefix: &str, authority: &str) -> String {
    let Some(at) = authority.rfind('@') else {
        return format!("{prefix}{authority}");
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{prefix}{}:***{}", &userinfo[..colon], &authority[at..]),
        None => format!("{prefix}{authority}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_are_suggested_far_ones_are_not() {
        let known = [
            "invoice".to_string(),
            "refund".to_string(),
            "ping".to_string(),
        ];
        assert_eq!(nearest("invoise", &known), Some("invoice"));
        assert_eq!(nearest("pign", &known), Some("ping"));
        assert_eq!(nearest("refunds", &known), Some("refund"));
        assert_eq!(nearest("shipment", &known), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "acb"), 1);
    }
}
