//! The Scheduled page: events not due yet (delayed, or waiting for a
//! retry), where the backend can list them.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{AppState, BROKER_BOUND, Base, broker_label};
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
    let mut body = String::new();
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
