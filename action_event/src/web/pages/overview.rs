//! The Overview: queues in priority order and the live chart.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::{AppState, Base, QueueRow, broker_label, queue_rows};
use crate::web::html::{self, esc, seg};

pub(in crate::web) async fn page(State(state): State<Arc<AppState>>, Base(base): Base) -> Response {
    let (rows, paused_error) = queue_rows(&state).await;
    let mut body = String::new();
    body.push_str(&health_banner(&*state.config.broker).await);
    if let Some(e) = paused_error {
        let _ = write!(
            body,
            "<p class=\"note\" id=\"paused-unknown\">Paused queues unknown: {}</p>",
            esc(&e)
        );
    }
    body.push_str(
        "<section><h2>Queues</h2><table id=\"queues\"><thead><tr><th>Queue</th><th>Waiting</th>\
         <th>Scheduled</th><th>In flight</th><th>Oldest waiting</th><th>State</th><th></th></tr></thead><tbody>",
    );
    for r in &rows {
        body.push_str(&queue_row(&state, &base, r));
    }
    body.push_str("</tbody></table><p class=\"note\">Strict priority: a poller takes from a queue only when every queue above it (that it serves) has nothing ready. In flight: events the pollers run now (as of their last report).</p></section>");
    body.push_str(
        "<section><h2>Throughput <small>per second, last 15 minutes</small></h2>\
         <div id=\"chart\" data-points=\"0\" data-processed-total=\"0\"><svg viewBox=\"0 0 900 220\" preserveAspectRatio=\"none\"></svg></div>\
         <p class=\"legend\"><span class=\"processed\">processed</span> <span class=\"failed\">failed</span> \
         <span class=\"retried\">retried</span> <span class=\"dead\">dead</span> \
         · now: <span id=\"rates\">…</span></p></section>",
    );
    let broker = broker_label(&state);
    let f = state.frame(&base, "Overview", "overview", &broker);
    html::page(&f, &body).into_response()
}

/// The broker's own warnings (RabbitMQ: stalled dead-lettering), one
/// banner each; empty when all is well or the backend has no such check.
async fn health_banner(broker: &dyn crate::broker::Broker) -> String {
    let health =
        tokio::time::timeout(std::time::Duration::from_secs(3), broker.broker_health()).await;
    let warnings = match health {
        Ok(Ok(Some(h))) => h.warnings,
        Ok(Ok(None)) => Vec::new(),
        Ok(Err(e)) => vec![format!("cannot check the broker's health: {e}")],
        Err(_) => vec!["cannot check the broker's health: no answer within 3s".to_string()],
    };
    warnings
        .iter()
        .map(|w| {
            format!(
                "<p class=\"warning banner\" id=\"broker-warning\">Warning: {}</p>",
                esc(w)
            )
        })
        .collect()
}

/// One `<tr>`, also what the live update redraws (same markup in JS).
fn queue_row(state: &AppState, base: &str, r: &QueueRow) -> String {
    let num = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "–".into());
    let oldest = r
        .oldest_ms
        .map(|ms| html::age(std::time::Duration::from_millis(ms)))
        .unwrap_or_else(|| "–".into());
    let st = match r.paused {
        Some(true) => "paused",
        Some(false) => "running",
        None => "?",
    };
    let control = if state.config.read_only || r.paused.is_none() {
        String::new()
    } else {
        let (action, label) = if r.paused == Some(true) {
            ("resume", "Resume")
        } else {
            ("pause", "Pause")
        };
        format!(
            "<form method=\"post\" action=\"{base}/queues/{q}/{action}\">{csrf}<button class=\"{action}\" type=\"submit\">{label}</button></form>",
            base = esc(base),
            q = esc(&seg(&r.queue)),
            csrf = html::csrf_field(&state.csrf),
        )
    };
    let title = r
        .error
        .as_deref()
        .map(|e| format!(" title=\"{}\"", esc(e)))
        .unwrap_or_default();
    format!(
        "<tr data-queue=\"{q}\"{title}><td class=\"queue\">{q}</td><td class=\"waiting\">{}</td><td class=\"scheduled\">{}</td>\
         <td class=\"in-flight\">{}</td><td class=\"oldest\">{oldest}</td><td class=\"state {st}\">{st}</td><td>{control}</td></tr>",
        num(r.waiting),
        num(r.scheduled),
        r.in_flight,
        q = esc(&r.queue),
    )
}

/// The table body, for the live update.
pub(in crate::web) fn rows_html(state: &AppState, base: &str, rows: &[QueueRow]) -> Html<String> {
    Html(rows.iter().map(|r| queue_row(state, base, r)).collect())
}
