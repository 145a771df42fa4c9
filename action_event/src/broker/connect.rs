//! Choosing a backend by URL: [`connect`], [`resolve_url`].

use std::sync::Arc;

use super::Broker;
#[cfg(feature = "amqp")]
use super::amqp;
#[cfg(feature = "postgres")]
use super::postgres;
#[cfg(feature = "sqlite")]
use super::sqlite;
use crate::{Error, redact_url};

/// The URL used when neither `--broker` nor `ACTION_EVENT_URL` is set.
///
/// ```
/// use action_event::broker::{DEFAULT_URL, resolve_url};
/// # // SAFETY: doctests run in their own process; nothing else reads the environment.
/// # unsafe { std::env::remove_var("ACTION_EVENT_URL") };
/// assert_eq!(resolve_url(None), DEFAULT_URL);
/// ```
pub const DEFAULT_URL: &str = "sqlite://action_event.db";

/// The environment variable that names the broker.
///
/// ```
/// use action_event::broker::{URL_ENV, resolve_url};
/// // SAFETY: doctests run in their own process; nothing else reads the environment.
/// unsafe { std::env::set_var(URL_ENV, "sqlite://other.db") };
/// assert_eq!(resolve_url(None), "sqlite://other.db");
/// ```
pub const URL_ENV: &str = "ACTION_EVENT_URL";

/// The URL to use: the given one, else `ACTION_EVENT_URL`, else [`DEFAULT_URL`].
///
/// ```
/// assert_eq!(action_event::broker::resolve_url(Some("sqlite://x.db")), "sqlite://x.db");
/// ```
pub fn resolve_url(explicit: Option<&str>) -> String {
    match explicit {
        Some(u) => u.to_string(),
        None => std::env::var(URL_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_string()),
    }
}

/// Opens the backend that `url` names. An unknown scheme or an unreachable
/// broker is an error that shows the URL with its password redacted.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, Error> {
    let scheme = url.split("://").next().unwrap_or("");
    if !url.contains("://") {
        return Err(Error::BadUrl {
            url: redact_url(url),
            message: "expected `scheme://...`, e.g. `sqlite://action_event.db` or `amqp://guest:guest@127.0.0.1:5672/%2f`".into(),
        });
    }
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(sqlite::SqliteBroker::open(url).await?)),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(feature_off(url, "sqlite")),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(Arc::new(amqp::AmqpBroker::open(url).await?)),
        #[cfg(not(feature = "amqp"))]
        "amqp" => Err(feature_off(url, "amqp")),
        #[cfg(feature = "tls")]
        "amqps" => Ok(Arc::new(amqp::AmqpBroker::open(url).await?)),
        #[cfg(not(feature = "tls"))]
        "amqps" => Err(feature_off(url, "tls")),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(postgres::PostgresBroker::open(url).await?)),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(feature_off(url, "postgres")),
        other => Err(Error::BadUrl {
            url: redact_url(url),
            message: format!(
                "unknown scheme `{other}`: use `sqlite://`, `amqp://` or `postgres://`"
            ),
        }),
    }
}

/// The error for a URL whose backend this build of action_event left out: it
/// names the Cargo feature and the line that turns it on.
#[cfg(not(all(
    feature = "sqlite",
    feature = "amqp",
    feature = "tls",
    feature = "postgres"
)))]
pub(crate) fn feature_off(url: &str, feature: &str) -> Error {
    let scheme = url.split("://").next().unwrap_or("");
    Error::BadUrl {
        url: redact_url(url),
        message: format!(
            "`{scheme}://` needs action_event's \"{feature}\" feature, which this build \
             leaves out: in Cargo.toml, action_event = {{ version = \"{}\", features = [\"{feature}\"] }}",
            env!("CARGO_PKG_VERSION")
        ),
    }
}
