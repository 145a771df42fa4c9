//! The Events page: the registry as the pollers see it.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{AppState, Base, broker_label};
use crate::registry::EventDecl;
use crate::web::html::{self, esc};

pub(in crate::web) async fn page(State(state): State<Arc<AppState>>, Base(base): Base) -> Response {
    let registry = match crate::registry() {
        Ok(r) => r,
        Err(e) => return html::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut body = String::from(
        "<p class=\"note\">The events this binary links, as its pollers run them: settings inherited from base events, the before filters in the order they run (ancestors first), and what each event skips.</p>\
         <table id=\"events\"><thead><tr><th>Event</th><th>Queue</th><th>Retries</th><th>Timeout</th><th>Extends</th><th>Filter chain</th><th>Skips</th></tr></thead><tbody>",
    );
    for e in registry.events() {
        let chain: Vec<String> = e
            .chain
            .iter()
            .map(|f| format!("<code title=\"{}\">{}</code>", esc(f.id), esc(f.path)))
            .collect();
        let skips: Vec<String> = inventory::iter::<EventDecl>
            .into_iter()
            .filter(|d| d.name == e.name && !d.base)
            .flat_map(|d| d.skips.iter())
            .map(|s| format!("<code>{}</code>", esc(s.path)))
            .collect();
        let timeout = e.timeout.map(html::age).unwrap_or_else(|| "none".into());
        let _ = write!(
            body,
            "<tr data-event=\"{n}\"><td><strong>{n}</strong><br><small>{}</small></td><td>{}</td><td>{}</td><td>{timeout}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(e.type_name),
            esc(e.queue),
            e.retries,
            esc(&e.ancestors.join(" → ")),
            if chain.is_empty() {
                "–".into()
            } else {
                chain.join(" → ")
            },
            if skips.is_empty() {
                "–".into()
            } else {
                skips.join(" ")
            },
            n = esc(e.name),
        );
    }
    body.push_str("</tbody></table>");
    let broker = broker_label(&state);
    let f = state.frame(&base, "Events", "events", &broker);
    html::page(&f, &body).into_response()
}
