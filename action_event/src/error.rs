//! The library's error type.

/// Everything that can go wrong inside action_event itself: queueing, the
/// broker, the registry, params that do not fit an event.
///
/// Handlers and filters return [`crate::Result`], whose error is
/// [`anyhow::Error`], so `?` works on any error there; this enum is what the
/// library's own functions return, and it converts into `anyhow::Error` too.
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
    /// An event name no handler in this binary knows.
    #[error("unknown event `{name}`: this binary knows {}", known_list(.known))]
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
    /// The broker failed or cannot be reached.
    #[error("broker `{url}`: {message}")]
    Broker {
        /// The URL with its password redacted.
        url: String,
        /// What failed.
        message: String,
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

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no events (is the crate that defines them linked? see `use my_events as _;` in the README)"
            .to_string()
    } else {
        known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Error {
    #[cfg(any(feature = "sqlite", feature = "amqp"))]
    pub(crate) fn broker(url: &str, message: impl std::fmt::Display) -> Self {
        Error::Broker {
            url: url.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Removes the password from a URL, for logs and errors.
///
/// ```
/// assert_eq!(
///     action_event::redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
///     "amqp://guest:***@127.0.0.1:5672/%2f"
/// );
/// assert_eq!(action_event::redact_url("sqlite://a.db"), "sqlite://a.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}
