//! The pages, one file each, and what they share: the state, the mount
//! prefix, the queue list.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;

use super::Dashboard;
use super::html::{self, Frame};
use super::stats;
use crate::broker::QueueDepth;
use crate::poller::{DEFAULT_QUEUES, Metrics};

pub(super) mod dead;
pub(super) mod events;
pub(super) mod overview;
pub(super) mod pollers;
pub(super) mod scheduled;

/// Everything the handlers share.
pub(crate) struct AppState {
    pub(crate) config: Dashboard,
    /// The token every form carries; made once per router.
    pub(crate) csrf: String,
    pub(crate) sampled: stats::Shared,
    /// The gauges `/metrics` serves (no counters: those are each poller's).
    pub(crate) metrics: Metrics,
    /// When a page last asked for the queue counts (ms since the epoch):
    /// the sampler reads them only while someone looks.
    pub(crate) last_view_ms: std::sync::atomic::AtomicU64,
}

impl AppState {
    pub(super) fn new(config: Dashboard) -> AppState {
        AppState {
            config,
            csrf: super::auth::new_token(),
            sampled: Default::default(),
            metrics: Metrics::outside_a_poller(),
            last_view_ms: Default::default(),
        }
    }

    pub(super) fn frame<'a>(
        &'a self,
        base: &'a str,
        title: &'a str,
        nav: &'a str,
        broker: &'a str,
    ) -> Frame<'a> {
        Frame {
            base,
            title,
            nav,
            broker,
            read_only: self.config.read_only,
        }
    }
}

/// Where the dashboard is mounted: `""` at the root of a server, `/jobs`
/// when an app nests it there. Links are built on it.
pub(super) struct Base(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Base, Self::Rejection> {
        let inner = parts.uri.path().to_string();
        let Some(OriginalUri(orig)) = parts.extensions.get::<OriginalUri>() else {
            return Ok(Base(String::new()));
        };
        let orig = orig.path();
        let base = match orig.strip_suffix(inner.as_str()) {
            Some(p) => p,
            None if inner == "/" => orig,
            None => "",
        };
        Ok(Base(base.trim_end_matches('/').to_string()))
    }
}

/// 404 for any other path.
pub(super) async fn not_found() -> Response {
    html::error(StatusCode::NOT_FOUND, "no such page of the dashboard")
}

/// The broker took too long.
pub(super) const BROKER_BOUND: Duration = Duration::from_secs(5);

/// The queues to show, highest priority first (see [`Dashboard::queues`]).
pub(super) async fn queue_order(state: &AppState) -> Vec<String> {
    if let Some(q) = &state.config.queues {
        return q.clone();
    }
    let mut order: Vec<String> = Vec::new();
    {
        let s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
        for row in &s.pollers {
            let queues = row
                .report
                .as_ref()
                .map(|r| r.queues.clone())
                .or_else(|| {
                    row.pid_file
                        .as_ref()
                        .and_then(|p| p.info.as_ref())
                        .map(|i| i.queues.clone())
                })
                .unwrap_or_default();
            order.extend(queues);
        }
    }
    order.extend(DEFAULT_QUEUES.iter().map(|q| q.to_string()));
    let mut others: Vec<String> = Vec::new();
    if let Ok(registry) = crate::registry() {
        others.extend(registry.events().map(|e| e.queue.to_string()));
    }
    if let Ok(Ok(Some(listed))) =
        tokio::time::timeout(BROKER_BOUND, state.config.broker.queues_with_events()).await
    {
        others.extend(listed);
    }
    others.sort();
    order.extend(others);
    let mut seen = HashSet::new();
    order.retain(|q| seen.insert(q.clone()));
    order
}

/// One queue as the overview shows it.
#[derive(Clone, serde::Serialize)]
pub(super) struct QueueRow {
    pub queue: String,
    pub waiting: Option<u64>,
    pub scheduled: Option<u64>,
    pub in_flight: u64,
    /// Age of the oldest waiting event, ms.
    pub oldest_ms: Option<u64>,
    /// `None` when the broker cannot tell.
    pub paused: Option<bool>,
    /// Why the counts are missing.
    pub error: Option<String>,
}

/// The overview's rows, counts read now.
pub(super) async fn queue_rows(state: &AppState) -> (Vec<QueueRow>, Option<String>) {
    // Counts read at most once per sample interval, however many browsers
    // look: a backlog of 100,000 makes each read cost the broker some
    // milliseconds, which the pollers' drain would pay.
    let now = crate::envelope::now_ms();
    state
        .last_view_ms
        .store(now, std::sync::atomic::Ordering::Relaxed);
    let fresh = state.config.sample_every.as_millis() as u64 * 2;
    {
        let s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, rows, err)) = &s.queues
            && now.saturating_sub(*at) <= fresh
        {
            return (rows.clone(), err.clone());
        }
    }
    let (rows, err) = read_queue_rows(state).await;
    let mut s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
    s.queues = Some((crate::envelope::now_ms(), rows.clone(), err.clone()));
    (rows, err)
}

/// The overview's rows, read from the broker now.
pub(super) async fn read_queue_rows(state: &AppState) -> (Vec<QueueRow>, Option<String>) {
    let queues = queue_order(state).await;
    let broker = &state.config.broker;
    let (paused, paused_error) =
        match tokio::time::timeout(BROKER_BOUND, broker.paused_queues()).await {
            Ok(Ok(p)) => (Some(p), None),
            Ok(Err(e)) => (None, Some(e.to_string())),
            Err(_) => (
                None,
                Some("the broker did not say which queues are paused within 5s".into()),
            ),
        };
    let mut in_flight: std::collections::HashMap<String, u64> = Default::default();
    {
        let s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
        for r in s.pollers.iter().filter_map(|r| r.report.as_ref()) {
            for e in &r.in_flight {
                *in_flight.entry(e.queue.clone()).or_default() += 1;
            }
        }
    }
    let depths = futures_util::future::join_all(queues.iter().map(|q| async move {
        match tokio::time::timeout(BROKER_BOUND, broker.depth(q)).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer from the broker within 5s".to_string()),
        }
    }))
    .await;
    let rows = queues
        .into_iter()
        .zip(depths)
        .map(|(queue, depth)| {
            let (d, error) = match depth {
                Ok(d) => (Some(d), None),
                Err(e) => (None, Some(e)),
            };
            let d: Option<QueueDepth> = d;
            QueueRow {
                waiting: d.as_ref().map(|d| d.waiting),
                scheduled: d.as_ref().and_then(|d| d.scheduled),
                oldest_ms: d
                    .as_ref()
                    .and_then(|d| d.oldest_age)
                    .map(|a| a.as_millis() as u64),
                in_flight: in_flight.get(&queue).copied().unwrap_or(0),
                paused: paused.as_ref().map(|p| p.contains(&queue)),
                queue,
                error,
            }
        })
        .collect();
    (rows, paused_error)
}

/// The broker's URL as pages show it (password redacted).
pub(super) fn broker_label(state: &AppState) -> String {
    crate::redact_url(&state.config.broker.url())
}
