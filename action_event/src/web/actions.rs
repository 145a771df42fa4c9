//! What changes state: every route here is a POST whose form carries the
//! CSRF token; a read-only dashboard refuses them all (403).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::same;
use super::html::{self, esc};
use super::pages::dead::{Filters, matching};
use super::pages::{AppState, BROKER_BOUND, Base, broker_label};
use crate::Error;

/// A parsed form: every value of every key, in order.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn filters(&self) -> Filters {
        let map: HashMap<String, String> = self.0.iter().cloned().collect();
        Filters::from_map(&map)
    }
}

/// Read-only and CSRF checks; the form when both pass.
fn admit(state: &AppState, body: &[u8]) -> Result<Form, Box<Response>> {
    if state.config.read_only {
        return Err(Box::new(html::error(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only: it changes nothing",
        )));
    }
    let form = Form::parse(body);
    match form.get("csrf") {
        Some(t) if same(t.as_bytes(), state.csrf.as_bytes()) => Ok(form),
        Some(_) => Err(Box::new(html::error(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is not this dashboard's (was it restarted? reload the page and try again)",
        ))),
        None => Err(Box::new(html::error(
            StatusCode::FORBIDDEN,
            "the form has no CSRF token: changes must come from the dashboard's own pages",
        ))),
    }
}

fn broker_failed(what: &str, e: &Error) -> Response {
    html::error(StatusCode::BAD_GATEWAY, &format!("{what}: {e}"))
}

/// Which dead events a retry or purge applies to: `one`, the selected
/// `id`s, or (`all=1`) every one matching the filters. `None` means every
/// one matching the broker-side filter (no error-text filter), done in one
/// call.
async fn targets(state: &AppState, form: &Form) -> Result<Option<Vec<String>>, Box<Response>> {
    if let Some(one) = form.get("one") {
        return Ok(Some(vec![one.to_string()]));
    }
    if form.get("all") == Some("1") {
        let filters = form.filters();
        if filters.error.is_none() {
            return Ok(None);
        }
        let dead = matching(state, &filters).await?;
        return Ok(Some(dead.into_iter().map(|d| d.id).collect()));
    }
    let ids = form.all("id");
    if ids.is_empty() {
        return Err(Box::new(html::error(
            StatusCode::BAD_REQUEST,
            "no dead event selected: tick at least one, or use \"all matching\"",
        )));
    }
    Ok(Some(ids))
}

/// Runs `op` on each id; unknown ids are collected, not fatal unless all are.
async fn each<F, Fut>(ids: &[String], what: &str, op: F) -> Result<u64, Box<Response>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<u64, Error>>,
{
    let mut done = 0;
    let mut missing = Vec::new();
    for id in ids {
        match tokio::time::timeout(BROKER_BOUND, op(id.clone())).await {
            Ok(Ok(n)) => done += n,
            Ok(Err(Error::NoSuchDeadEvent(id))) => missing.push(id),
            Ok(Err(e)) => return Err(Box::new(broker_failed(what, &e))),
            Err(_) => {
                return Err(Box::new(html::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("{what}: no answer from the broker within 5s"),
                )));
            }
        }
    }
    if done == 0 && !missing.is_empty() {
        return Err(Box::new(html::error(
            StatusCode::NOT_FOUND,
            &format!(
                "no dead event with id {} (retried or purged already?)",
                missing.join(", ")
            ),
        )));
    }
    Ok(done)
}

pub(super) async fn dead_retry(
    State(state): State<Arc<AppState>>,
    Base(base): Base,
    body: Bytes,
) -> Response {
    let form = match admit(&state, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let broker = state.config.broker.clone();
    let n = match targets(&state, &form).await {
        Err(r) => return *r,
        Ok(None) => match tokio::time::timeout(
            BROKER_BOUND,
            broker.dead_retry(None, &form.filters().broker_filter()),
        )
        .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return broker_failed("retry", &e),
            Err(_) => {
                return html::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "retry: no answer from the broker within 5s",
                );
            }
        },
        Ok(Some(ids)) => match each(&ids, "retry", |id| {
            let b = broker.clone();
            async move { b.dead_retry(Some(&id), &Default::default()).await }
        })
        .await
        {
            Ok(n) => n,
            Err(r) => return *r,
        },
    };
    Redirect::to(&format!("{base}/dead?retried={n}")).into_response()
}

pub(super) async fn dead_purge(
    State(state): State<Arc<AppState>>,
    Base(base): Base,
    body: Bytes,
) -> Response {
    let form = match admit(&state, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let broker = state.config.broker.clone();
    let targets = match targets(&state, &form).await {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if form.get("confirm") != Some("yes") {
        return confirm_purge(&state, &base, &form, targets.as_deref()).await;
    }
    let n = match targets {
        None => match tokio::time::timeout(
            BROKER_BOUND,
            broker.dead_purge(None, &form.filters().broker_filter()),
        )
        .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return broker_failed("purge", &e),
            Err(_) => {
                return html::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "purge: no answer from the broker within 5s",
                );
            }
        },
        Some(ids) => match each(&ids, "purge", |id| {
            let b = broker.clone();
            async move { b.dead_purge(Some(&id), &Default::default()).await }
        })
        .await
        {
            Ok(n) => n,
            Err(r) => return *r,
        },
    };
    Redirect::to(&format!("{base}/dead?purged={n}")).into_response()
}

/// The page that asks before a purge: the same form again, with `confirm=yes`.
async fn confirm_purge(
    state: &AppState,
    base: &str,
    form: &Form,
    ids: Option<&[String]>,
) -> Response {
    let count = match ids {
        Some(ids) => ids.len(),
        None => match matching(state, &form.filters()).await {
            Ok(d) => d.len(),
            Err(r) => return *r,
        },
    };
    let mut hidden = html::csrf_field(&state.csrf);
    hidden.push_str("<input type=\"hidden\" name=\"confirm\" value=\"yes\">");
    for (k, v) in &form.0 {
        if k != "csrf" && k != "confirm" {
            let _ = write!(
                hidden,
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            );
        }
    }
    let body = format!(
        "<p class=\"warning\">Purge {count} dead event(s)? They are deleted for good.</p>\
         <form method=\"post\" action=\"{b}/dead/purge\">{hidden}<button type=\"submit\" id=\"confirm-purge\" class=\"danger\">Yes, purge {count}</button> \
         <a href=\"{b}/dead\">Cancel</a></form>",
        b = esc(base),
    );
    let broker = broker_label(state);
    let f = state.frame(base, "Purge dead events?", "dead", &broker);
    html::page(&f, &body).into_response()
}

async fn pause_or_resume(
    state: &AppState,
    base: &str,
    body: &[u8],
    queue: &str,
    pause: bool,
) -> Response {
    if let Err(r) = admit(state, body) {
        return *r;
    }
    if queue.trim().is_empty() {
        return html::error(StatusCode::BAD_REQUEST, "no queue named");
    }
    let broker = &state.config.broker;
    let done = if pause {
        broker.pause_queue(queue).await
    } else {
        broker.resume_queue(queue).await
    };
    // The overview shows the new state at once, not the cached counts.
    state
        .sampled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .queues = None;
    match done {
        Ok(()) => Redirect::to(&format!("{base}/")).into_response(),
        Err(e) => broker_failed(if pause { "pause" } else { "resume" }, &e),
    }
}

pub(super) async fn pause(
    State(state): State<Arc<AppState>>,
    Base(base): Base,
    Path(queue): Path<String>,
    body: Bytes,
) -> Response {
    pause_or_resume(&state, &base, &body, &queue, true).await
}

pub(super) async fn resume(
    State(state): State<Arc<AppState>>,
    Base(base): Base,
    Path(queue): Path<String>,
    body: Bytes,
) -> Response {
    pause_or_resume(&state, &base, &body, &queue, false).await
}
