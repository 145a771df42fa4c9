//! Dead letters: the list with filters, one event in full.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{AppState, BROKER_BOUND, Base, broker_label};
use crate::broker::{DeadEvent, DeadFilter};
use crate::web::html::{self, esc, seg};

/// How many rows the list shows at most.
const SHOWN: usize = 500;

/// The list's filters, from the query string (unknown keys are ignored).
pub(in crate::web) struct Filters {
    pub queue: Option<String>,
    pub event: Option<String>,
    pub error: Option<String>,
}

impl Filters {
    pub(in crate::web) fn from_map(q: &HashMap<String, String>) -> Filters {
        let get = |k: &str| {
            q.get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Filters {
            queue: get("queue"),
            event: get("event"),
            error: get("error"),
        }
    }

    pub(in crate::web) fn broker_filter(&self) -> DeadFilter {
        DeadFilter {
            queue: self.queue.clone(),
            event: self.event.clone(),
            died_before_ms: None,
        }
    }

    pub(in crate::web) fn matches(&self, d: &DeadEvent) -> bool {
        let Some(text) = &self.error else { return true };
        let text = text.to_lowercase();
        d.reason.to_lowercase().contains(&text)
            || d.errors
                .iter()
                .any(|e| e.message.to_lowercase().contains(&text))
    }

    fn hidden(&self) -> String {
        let mut out = String::new();
        for (k, v) in [
            ("queue", &self.queue),
            ("event", &self.event),
            ("error", &self.error),
        ] {
            if let Some(v) = v {
                let _ = write!(
                    out,
                    "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                    esc(v)
                );
            }
        }
        out
    }
}

/// The dead events matching `filters`, newest first. (The error is the
/// page to answer with, boxed: a `Response` is large.)
pub(in crate::web) async fn matching(
    state: &AppState,
    filters: &Filters,
) -> Result<Vec<DeadEvent>, Box<Response>> {
    let listed = match tokio::time::timeout(
        BROKER_BOUND,
        state.config.broker.dead_list(&filters.broker_filter()),
    )
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            return Err(Box::new(html::error(
                StatusCode::BAD_GATEWAY,
                &e.to_string(),
            )));
        }
        Err(_) => {
            return Err(Box::new(html::error(
                StatusCode::GATEWAY_TIMEOUT,
                "the broker did not list the dead letters within 5s",
            )));
        }
    };
    let mut dead: Vec<DeadEvent> = listed.into_iter().filter(|d| filters.matches(d)).collect();
    dead.reverse();
    Ok(dead)
}

pub(in crate::web) async fn list(
    State(state): State<Arc<AppState>>,
    Base(base): Base,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filters = Filters::from_map(&q);
    let dead = match matching(&state, &filters).await {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or(""));
    let mut body = format!(
        "<form method=\"get\" class=\"filters\" action=\"{b}/dead\">\
         <label>Queue <input name=\"queue\" value=\"{}\"></label> <label>Event <input name=\"event\" value=\"{}\"></label> \
         <label>Error text <input name=\"error\" value=\"{}\"></label> <button type=\"submit\">Filter</button> <a href=\"{b}/dead\">clear</a></form>",
        v(&filters.queue),
        v(&filters.event),
        v(&filters.error),
        b = esc(&base),
    );
    for (key, verb) in [("retried", "Retried"), ("purged", "Purged")] {
        if let Some(n) = q.get(key).and_then(|v| v.parse::<u64>().ok()) {
            let _ = write!(
                body,
                "<p class=\"done\" id=\"done\">{verb} {n} dead event(s).</p>"
            );
        }
    }
    let _ = write!(
        body,
        "<p class=\"note\" id=\"dead-count\" data-count=\"{n}\">{n} dead event(s){}, newest first.</p>",
        if dead.len() > SHOWN {
            format!(" ({SHOWN} shown: narrow with the filters)")
        } else {
            String::new()
        },
        n = dead.len(),
    );
    let ro = state.config.read_only;
    if !ro {
        let _ = write!(
            body,
            "<form method=\"post\" id=\"dead-form\" action=\"{b}/dead/retry\">{}{}",
            html::csrf_field(&state.csrf),
            filters.hidden(),
            b = esc(&base),
        );
    }
    body.push_str("<table id=\"dead\"><thead><tr><th></th><th>Id</th><th>Event</th><th>Queue</th><th>Attempts</th><th>Died</th><th>Last error</th><th></th></tr></thead><tbody>");
    for d in dead.iter().take(SHOWN) {
        let check = if ro {
            String::new()
        } else {
            format!(
                "<input type=\"checkbox\" name=\"id\" value=\"{}\">",
                esc(&d.id)
            )
        };
        let retry = if ro {
            String::new()
        } else {
            format!(
                "<button type=\"submit\" class=\"retry-one\" name=\"one\" value=\"{}\">Retry</button>",
                esc(&d.id)
            )
        };
        let reason: String = d.reason.chars().take(160).collect();
        let _ = write!(
            body,
            "<tr data-id=\"{id}\"><td>{check}</td><td><a href=\"{b}/dead/{link}\"><code>{id}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"reason\">{}</td><td>{retry}</td></tr>",
            esc(d.name.as_deref().unwrap_or("?")),
            esc(&d.queue),
            d.attempts,
            html::when(d.died_at_ms),
            esc(&reason),
            id = esc(&d.id),
            link = esc(&seg(&d.id)),
            b = esc(&base),
        );
    }
    body.push_str("</tbody></table>");
    if !ro {
        let _ = write!(
            body,
            "<p class=\"actions\"><button type=\"submit\" id=\"retry-selected\">Retry selected</button> \
             <button type=\"submit\" name=\"all\" value=\"1\" id=\"retry-all\">Retry all {n} matching</button> \
             <button type=\"submit\" formaction=\"{b}/dead/purge\" id=\"purge-selected\">Purge selected…</button> \
             <button type=\"submit\" formaction=\"{b}/dead/purge\" name=\"all\" value=\"1\" id=\"purge-all\">Purge all {n} matching…</button></p></form>",
            n = dead.len(),
            b = esc(&base),
        );
    }
    let broker = broker_label(&state);
    let f = state.frame(&base, "Dead letters", "dead", &broker);
    html::page(&f, &body).into_response()
}

pub(in crate::web) async fn show(
    State(state): State<Arc<AppState>>,
    Base(base): Base,
    Path(id): Path<String>,
) -> Response {
    let all = match matching(
        &state,
        &Filters {
            queue: None,
            event: None,
            error: None,
        },
    )
    .await
    {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let Some(d) = all.into_iter().find(|d| d.id == id) else {
        return html::error(
            StatusCode::NOT_FOUND,
            &format!("no dead event with id `{id}` (retried or purged already?)"),
        );
    };
    let body_pretty = serde_json::from_str::<serde_json::Value>(&d.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| d.body.clone());
    let mut body = format!(
        "<dl class=\"facts\"><dt>Id</dt><dd><code>{}</code></dd><dt>Event</dt><dd>{}</dd><dt>Queue</dt><dd>{}</dd>\
         <dt>Attempts</dt><dd>{}</dd><dt>Died</dt><dd>{}</dd><dt>Reason</dt><dd class=\"reason\">{}</dd></dl>\
         <h2>Every attempt's error</h2><table id=\"attempts\"><thead><tr><th>Attempt</th><th>When</th><th>Error</th></tr></thead><tbody>",
        esc(&d.id),
        esc(d.name.as_deref().unwrap_or("?")),
        esc(&d.queue),
        d.attempts,
        html::when(d.died_at_ms),
        esc(&d.reason),
    );
    if d.errors.is_empty() {
        body.push_str("<tr><td colspan=\"3\">none recorded (see the reason above)</td></tr>");
    }
    for e in &d.errors {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            e.attempt,
            html::when(e.at_ms),
            esc(&e.message)
        );
    }
    let _ = write!(
        body,
        "</tbody></table><h2>Body</h2><pre id=\"dead-body\">{}</pre>",
        esc(&body_pretty)
    );
    if !state.config.read_only {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{b}/dead/retry\">{csrf}<input type=\"hidden\" name=\"id\" value=\"{id}\">\
             <button type=\"submit\" id=\"retry\">Retry</button> <button type=\"submit\" formaction=\"{b}/dead/purge\" id=\"purge\">Purge…</button></form>",
            b = esc(&base),
            csrf = html::csrf_field(&state.csrf),
            id = esc(&d.id),
        );
    }
    let broker = broker_label(&state);
    let title = format!("Dead event {}", d.id);
    let f = state.frame(&base, &title, "dead", &broker);
    html::page(&f, &body).into_response()
}
