//! RabbitMQ's management HTTP API, for the stall check (`stall`): the
//! `management` URL option and one plain-HTTP GET.
//!
//! `management=http://host:15672` (several, comma-separated, for a
//! cluster: they are tried in turn, starting from the one that answered
//! last). Credentials are the AMQP URL's (RabbitMQ's `guest` when it has
//! none) unless the management URL carries its own
//! (`http://monitor:secret@host:15672`); the user needs the `monitoring`
//! (or `management`) tag. A path after the port is the management
//! plugin's `path_prefix`. Plain `http://` only: `https://` is an error
//! (reach a TLS-only API through a local proxy or port forward).
//!
//! Each look is one connection and one request (hyper's HTTP/1 client, no
//! pool: a look every 10 s does not need one), bounded by a timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response body read (a page of 500 queues with samples is
/// well under 1 MiB).
const MAX_BODY: usize = 16 << 20;

/// One management API endpoint, parsed from the `management` option.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// `host:port`, for the connection and the `Host` header.
    authority: String,
    /// The plugin's `path_prefix`, without a trailing `/` (usually empty).
    path_prefix: String,
    /// `Basic ...`.
    auth: String,
    /// The user, for errors (never the password).
    user: String,
}

impl Endpoint {
    /// `http://host:port/prefix`, without credentials, for logs and errors.
    pub(super) fn shown(&self) -> String {
        format!("http://{}{}", self.authority, self.path_prefix)
    }
}

/// The endpoints of the `management` option, tried in turn.
#[derive(Debug)]
pub(super) struct Management {
    pub(super) endpoints: Vec<Endpoint>,
    /// The vhost of the AMQP URL, percent-encoded for an API path.
    pub(super) vhost_path: String,
    /// Index of the endpoint that answered last.
    cursor: AtomicUsize,
}

/// Parses `management=<value>` against the AMQP URL `amqp` (for its
/// credentials and vhost). Errors say what is wrong with which URL and
/// never show a password.
pub(super) fn parse(value: &str, amqp: &url::Url) -> Result<Management, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (amqp_user, amqp_pass) = match amqp.username() {
        "" => ("guest".to_string(), "guest".to_string()),
        u => (decode(u), decode(amqp.password().unwrap_or(""))),
    };
    let mut endpoints = Vec::new();
    for one in value.split(',').map(str::trim) {
        if one.is_empty() {
            return Err("`management`: an empty URL in the list (expected `http://host:15672` or `http://host1:15672,http://host2:15672`)".to_string());
        }
        let u = url::Url::parse(one).map_err(|e| {
            format!(
                "`management`: `{}` is not a URL: {e} (expected `http://host:15672`)",
                strip_userinfo(one)
            )
        })?;
        let shown = strip_userinfo(one);
        match u.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "`management={shown}`: https is not supported, only plain http (reach the management API over http on a trusted network, or through a local proxy or port forward)"
                ));
            }
            s => {
                return Err(format!(
                    "`management={shown}`: expected `http://`, got `{s}://`"
                ));
            }
        }
        let Some(host) = u.host_str().filter(|h| !h.is_empty()) else {
            return Err(format!(
                "`management={shown}`: no host (expected `http://host:15672`)"
            ));
        };
        if u.query().is_some() || u.fragment().is_some() {
            return Err(format!(
                "`management={shown}`: a management URL takes no `?` or `#` part (put the other options on the AMQP URL)"
            ));
        }
        let port = u.port().unwrap_or(15672);
        let (user, pass) = match u.username() {
            "" => (amqp_user.clone(), amqp_pass.clone()),
            name => (decode(name), decode(u.password().unwrap_or(""))),
        };
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        endpoints.push(Endpoint {
            authority: format!("{host}:{port}"),
            path_prefix: u.path().trim_end_matches('/').to_string(),
            auth,
            user,
        });
    }
    let vhost = match amqp.path() {
        "" | "/" => "/".to_string(),
        p => decode(&p[1..]),
    };
    Ok(Management {
        endpoints,
        vhost_path: encode(&vhost),
        cursor: AtomicUsize::new(0),
    })
}

/// Percent-encodes one path segment or query value (everything but
/// unreserved characters).
pub(super) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `http://user:pass@host` -> `http://host`, for errors.
fn strip_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Management {
    /// GETs `path_and_query` (after the plugin's prefix, starting `/api/`)
    /// from the first endpoint that answers, starting from the one that
    /// answered last, and decodes the JSON. The error names every endpoint
    /// tried and what went wrong.
    pub(super) async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, String> {
        let n = self.endpoints.len();
        let start = self.cursor.load(Ordering::Relaxed) % n.max(1);
        let mut errors = Vec::new();
        for i in 0..n {
            let at = (start + i) % n;
            let ep = &self.endpoints[at];
            match tokio::time::timeout(REQUEST_TIMEOUT, get_one(ep, path_and_query)).await {
                Ok(Ok(body)) => {
                    self.cursor.store(at, Ordering::Relaxed);
                    return serde_json::from_slice(&body).map_err(|e| {
                        format!(
                            "{}{path_and_query}: unexpected JSON from the management API: {e}",
                            ep.shown()
                        )
                    });
                }
                Ok(Err(e)) => errors.push(format!("{}: {e}", ep.shown())),
                Err(_) => errors.push(format!(
                    "{}: no answer within {}",
                    ep.shown(),
                    humantime::format_duration(REQUEST_TIMEOUT)
                )),
            }
        }
        Err(errors.join("; "))
    }
}

/// One request on a fresh connection; the body of a 2xx answer.
async fn get_one(ep: &Endpoint, path_and_query: &str) -> Result<Bytes, String> {
    let stream = tokio::net::TcpStream::connect(&ep.authority)
        .await
        .map_err(|e| format!("cannot connect: {e} (is the rabbitmq_management plugin enabled?)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("{}{path_and_query}", ep.path_prefix))
        .header(hyper::header::HOST, &ep.authority)
        .header(hyper::header::AUTHORIZATION, &ep.auth)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = res.status();
    let body = Limited::new(res.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    conn.abort();
    if status == hyper::StatusCode::UNAUTHORIZED {
        return Err(format!(
            "user `{}` was refused (401): give the management URL a user with the `monitoring` tag, e.g. `management=http://monitor:secret@host:15672`",
            ep.user
        ));
    }
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("HTTP {status}: {text}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(s: &str) -> url::Url {
        url::Url::parse(s).expect("url")
    }

    #[test]
    fn credentials_and_vhost() {
        let m = parse("http://h:15672", &amqp("amqp://app:p%40ss@h:5672/shop%2Fv")).expect("ok");
        assert_eq!(m.endpoints.len(), 1);
        assert_eq!(m.endpoints[0].shown(), "http://h:15672");
        assert_eq!(m.endpoints[0].user, "app");
        let expected = base64::engine::general_purpose::STANDARD.encode("app:p@ss");
        assert_eq!(m.endpoints[0].auth, format!("Basic {expected}"));
        assert_eq!(m.vhost_path, "shop%2Fv");
        let m = parse(
            "http://mon:s@h1:1/rmq/, http://h2",
            &amqp("amqp://127.0.0.1/%2f"),
        )
        .expect("ok");
        assert_eq!(m.endpoints[0].shown(), "http://h1:1/rmq");
        assert_eq!(m.endpoints[0].user, "mon");
        assert_eq!(m.endpoints[1].shown(), "http://h2:15672");
        assert_eq!(m.endpoints[1].user, "guest");
        assert_eq!(m.vhost_path, "%2F");
        assert_eq!(
            parse("http://h", &amqp("amqp://h")).expect("ok").vhost_path,
            "%2F"
        );
    }

    #[test]
    fn bad_management_urls_say_why_without_the_password() {
        let a = amqp("amqp://h/%2f");
        for (value, needle) in [
            ("https://u:secret@h:15671", "https is not supported"),
            ("ftp://h", "expected `http://`"),
            ("http://h,,http://h2", "empty URL"),
            ("http://u:secret@h?x=1", "no `?` or `#`"),
            ("not a url", "not a URL"),
        ] {
            let e = parse(value, &a).expect_err(value);
            assert!(e.contains(needle), "{value}: {e}");
            assert!(!e.contains("secret"), "{value}: {e}");
        }
    }
}
