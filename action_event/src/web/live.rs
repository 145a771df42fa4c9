//! What the pages poll (`/api/live`: the Overview's table and chart) and
//! Prometheus `/metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::pages::{AppState, Base, overview, queue_order, queue_rows};
use super::stats::Point;

#[derive(Serialize)]
struct Live {
    /// The Overview's table body.
    rows_html: String,
    /// The chart's points, oldest first.
    points: Vec<Point>,
    /// When the pollers were last sampled, ms since the epoch.
    sampled_at_ms: u64,
}

pub(super) async fn live(State(state): State<Arc<AppState>>, Base(base): Base) -> Response {
    let (rows, _) = queue_rows(&state).await;
    let rows_html = overview::rows_html(&state, &base, &rows).0;
    let s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
    let live = Live {
        rows_html,
        points: s.points.iter().copied().collect(),
        sampled_at_ms: s.at_ms,
    };
    drop(s);
    let mut r = Json(live).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The broker's gauges (waiting, scheduled, oldest age per queue; pollers
/// alive in the PID directory), read now. The counters are each poller's
/// own (`poller start --metrics ADDR`).
pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let queues = queue_order(&state).await;
    state
        .metrics
        .refresh(
            &*state.config.broker,
            &queues,
            state.config.pid_dir.as_deref(),
        )
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
