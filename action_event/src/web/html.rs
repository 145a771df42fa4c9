//! HTML by hand: escaping, the page layout, error pages, times.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a path segment (a queue name or an event id in a link).
pub(super) fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// What every page needs to draw its frame.
pub(super) struct Frame<'a> {
    /// Where the dashboard is mounted (`""` at the root, `/jobs` nested).
    pub base: &'a str,
    /// The page's title.
    pub title: &'a str,
    /// The nav entry to highlight.
    pub nav: &'a str,
    /// The broker URL, password redacted.
    pub broker: &'a str,
    /// Whether POSTs are refused.
    pub read_only: bool,
}

const NAV: [(&str, &str, &str); 5] = [
    ("overview", "/", "Overview"),
    ("pollers", "/pollers", "Pollers"),
    ("events", "/events", "Events"),
    ("dead", "/dead", "Dead letters"),
    ("scheduled", "/scheduled", "Scheduled"),
];

/// A full page: frame around `body`.
pub(super) fn page(f: &Frame<'_>, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (key, path, label) in NAV {
        let class = if key == f.nav { " class=\"on\"" } else { "" };
        let href = if path == "/" {
            format!("{}/", f.base)
        } else {
            format!("{}{path}", f.base)
        };
        let _ = write!(nav, "<a href=\"{}\"{class}>{label}</a>", esc(&href));
    }
    let ro = if f.read_only {
        "<span class=\"badge\">read-only</span>"
    } else {
        ""
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · action_event</title>\
         <link rel=\"stylesheet\" href=\"{base}/assets/dashboard.css\"></head>\
         <body data-base=\"{base}\"><header><strong>action_event</strong><nav>{nav}</nav>\
         <span class=\"broker\">{broker}</span>{ro}</header><main><h1>{title}</h1>{body}</main>\
         <script src=\"{base}/assets/dashboard.js\"></script></body></html>",
        title = esc(f.title),
        base = esc(f.base),
        broker = esc(f.broker),
    ))
}

/// A small error page with `status` (4xx for bad input, 5xx for a broker
/// that failed).
pub(super) fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code}</title></head>\
         <body><h1>{code}</h1><p class=\"error\">{msg}</p><p><a href=\"javascript:history.back()\">Back</a></p></body></html>",
        code = esc(&status.to_string()),
        msg = esc(message),
    );
    (status, Html(body)).into_response()
}

/// `ms` since the epoch as `2026-12-03 16:30:00Z`.
pub(super) fn when(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
}

/// How long ago `ms` was, e.g. `3m 12s`.
pub(super) fn ago(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    age(Duration::from_millis(now.saturating_sub(ms)))
}

/// A duration rounded to seconds (milliseconds under one second).
pub(super) fn age(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// A hidden CSRF field.
pub(super) fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
