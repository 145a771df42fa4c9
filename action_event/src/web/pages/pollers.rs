//! The Pollers page: every live poller and what each of its slots runs.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{AppState, Base, broker_label};
use crate::web::html::{self, esc};

pub(in crate::web) async fn page(State(state): State<Arc<AppState>>, Base(base): Base) -> Response {
    if state
        .sampled
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .at_ms
        == 0
    {
        crate::web::stats::sample(&state).await;
    }
    let s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
    let mut body = String::new();
    let _ = write!(
        body,
        "<p class=\"note\">From {} · sampled {} ago.</p>",
        esc(s.source),
        html::ago(s.at_ms)
    );
    if let Some(e) = &s.error {
        let _ = write!(body, "<p class=\"error\">{}</p>", esc(e));
    }
    body.push_str(
        "<table id=\"pollers\"><thead><tr><th>Id</th><th>Host</th><th>PID</th><th>Alive</th><th>Queues</th>\
         <th>Concurrency</th><th>Version</th><th>Started</th><th>Processed</th><th>Running now</th></tr></thead><tbody>",
    );
    if s.pollers.is_empty() {
        body.push_str("<tr><td colspan=\"10\">No pollers. On SQLite, pollers show here when started with <code>--id</code> (they write their PID file and report in the PID directory).</td></tr>");
    }
    for row in &s.pollers {
        let (id, host, pid, queues, conc, started) = match (&row.report, &row.pid_file) {
            (Some(r), _) => (
                r.id.clone(),
                r.host.clone(),
                r.pid.to_string(),
                r.queues.join(" "),
                r.concurrency.to_string(),
                html::when(r.started_at_ms),
            ),
            (None, Some(p)) => {
                let i = p.info.as_ref();
                (
                    p.id.clone(),
                    i.map(|i| i.host.clone()).unwrap_or_else(|| "?".into()),
                    p.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                    i.map(|i| i.queues.join(" ")).unwrap_or_else(|| "?".into()),
                    i.map(|i| i.concurrency.to_string())
                        .unwrap_or_else(|| "?".into()),
                    i.map(|i| html::when(i.started_at_ms))
                        .unwrap_or_else(|| "?".into()),
                )
            }
            (None, None) => continue,
        };
        let version = row
            .report
            .as_ref()
            .map(|r| r.version.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "?".into());
        let alive = row.pid_file.as_ref().map(|p| p.alive).unwrap_or(true);
        let processed = row
            .report
            .as_ref()
            .map(|r| r.counts.processed.to_string())
            .unwrap_or_else(|| "–".into());
        let mut running = String::new();
        if let Some(r) = &row.report {
            if r.in_flight.is_empty() {
                running.push_str("idle");
            }
            for e in &r.in_flight {
                let _ = write!(
                    running,
                    "<div class=\"slot\">{}:{} <code>{}</code> for {}</div>",
                    esc(&e.queue),
                    esc(&e.name),
                    esc(&e.id),
                    html::ago(e.started_at_ms)
                );
            }
        } else {
            running.push('–');
        }
        let _ = write!(
            body,
            "<tr class=\"poller\" data-pid=\"{pid}\"><td>{}</td><td>{}</td><td>{pid}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{processed}</td><td>{running}</td></tr>",
            esc(&id),
            esc(&host),
            if alive { "yes" } else { "no" },
            esc(&queues),
            esc(&conc),
            esc(&version),
            esc(&started),
            pid = esc(&pid),
        );
    }
    body.push_str("</tbody></table><p class=\"note\">Version: the action_event version each poller runs. Processed: runs it finished since it started.</p>");
    drop(s);
    let broker = broker_label(&state);
    let f = state.frame(&base, "Pollers", "pollers", &broker);
    html::page(&f, &body).into_response()
}
