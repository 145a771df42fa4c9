//! The Scheduled page: the periodic events (schedule, last tick queued,
//! next tick) and the events not due yet (delayed, or waiting for a
//! retry), where the backend can list them.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{AppState, BROKER_BOUND, Base, broker_label};
use crate::periodic;
use crate::web::html::{self, esc};

/// How many are listed at most.
const LIMIT: usize = 500;

pub(in crate::web) async fn page(State(state): State<Arc<AppState>>, Base(base): Base) -> Response {
    let listed =
        match tokio::time::timeout(BROKER_BOUND, state.config.broker.scheduled_list(LIMIT)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return html::error(StatusCode::BAD_GATEWAY, &e.to_string()),
            Err(_) => {
                return html::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the broker did not answer within 5s",
                );
            }
        };
    let mut body = periodic_section(&state).await;
    match listed {
        None => body.push_str(
            "<p class=\"note\" id=\"cannot-list\">This backend cannot list scheduled and retrying events. \
             RabbitMQ keeps them in per-delay queues whose messages can only be read by consuming them; \
             they are not lost, and they come back to their queue when due.</p>",
        ),
        Some(events) => {
            let _ = write!(
                body,
                "<p class=\"note\">{} event(s) not due yet, soonest first{}. Attempt 1: delayed by its producer; more: waiting for a retry.</p>",
                events.len(),
                if events.len() == LIMIT { " (first 500 shown)" } else { "" }
            );
            body.push_str("<table id=\"scheduled\"><thead><tr><th>Id</th><th>Event</th><th>Queue</th><th>Attempt</th><th>Due</th><th>Body</th></tr></thead><tbody>");
            for e in events {
                let _ = write!(
                    body,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code class=\"body\">{}</code></td></tr>",
                    esc(&e.id),
                    esc(e.name.as_deref().unwrap_or("?")),
                    esc(&e.queue),
                    e.attempt,
                    html::when(e.due_at_ms),
                    esc(&e.body),
                );
            }
            body.push_str("</tbody></table>");
        }
    }
    let broker = broker_label(&state);
    let f = state.frame(&base, "Scheduled and retrying", "scheduled", &broker);
    html::page(&f, &body).into_response()
}

/// The periodic events this binary links: schedule, the last tick queued
/// (as the broker records it) and the next tick, like `poller status`.
async fn periodic_section(state: &AppState) -> String {
    let Ok(registry) = crate::registry() else {
        return String::new();
    };
    let events: Vec<_> = registry
        .events()
        .filter_map(|e| e.periodic.as_ref().map(|p| (e, p)))
        .collect();
    if events.is_empty() {
        return String::new();
    }
    let last = match tokio::time::timeout(BROKER_BOUND, state.config.broker.tick_last()).await {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the broker did not answer within 5s".to_string()),
    };
    let mut body = String::from("<h2>Periodic events</h2>");
    if let Err(e) = &last {
        let _ = write!(
            body,
            "<p class=\"note\">The last ticks are unknown: {}</p>",
            esc(e)
        );
    }
    body.push_str("<table id=\"periodic\"><thead><tr><th>Event</th><th>Queue</th><th>Schedule</th><th>Last tick queued</th><th>Next tick</th></tr></thead><tbody>");
    let now = i64::try_from(crate::envelope::now_ms()).unwrap_or(i64::MAX);
    for (event, periodic) in events {
        let shown_last = match &last {
            Err(_) => "?".to_string(),
            Ok(l) => l
                .get(event.name)
                .map(|t| periodic::format_tick(*t))
                .unwrap_or_else(|| "never".to_string()),
        };
        let next = periodic
            .schedule
            .next_after(now)
            .map(periodic::format_tick)
            .unwrap_or_else(|| "none".to_string());
        let mut schedule = periodic.schedule.to_string();
        if periodic.missed == periodic::Missed::Skip {
            schedule.push_str(", missed: skip");
        }
        let _ = write!(
            body,
            "<tr data-event=\"{n}\"><td><strong>{n}</strong></td><td>{}</td><td>{}</td><td class=\"last-tick\">{}</td><td>{}</td></tr>",
            esc(event.queue),
            esc(&schedule),
            esc(&shown_last),
            esc(&next),
            n = esc(event.name),
        );
    }
    body.push_str("</tbody></table><h2>Not due yet</h2>");
    body
}
