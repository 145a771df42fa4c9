//! The sampler: every few seconds, the pollers' reports ([`Broker::pollers`]:
//! status requests on RabbitMQ, rows in the database on PostgreSQL and
//! SQLite; the report files beside the PID files only where the broker has
//! no view), kept for the
//! Pollers page, and the differences of their counts turned into the
//! per-second points of the Overview's chart (30 minutes kept).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;

use super::pages::AppState;
use crate::broker::{Broker, PollerCounts, PollerReport};
use crate::envelope::now_ms;
use crate::poller::{PollerStatus, list_pollers, pid_path, read_report};

/// How much chart history is kept.
pub(super) const KEEP: Duration = Duration::from_secs(30 * 60);

/// One point of the chart: rates per second over the interval ending at `t`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(super) struct Point {
    /// End of the interval, ms since the epoch.
    pub t: u64,
    pub processed: f64,
    pub failed: f64,
    pub retried: f64,
    pub dead: f64,
}

/// One poller as the Pollers page shows it.
#[derive(Clone, Debug)]
pub(super) struct PollerRow {
    /// Its report, when it gave one.
    pub report: Option<PollerReport>,
    /// Its PID file (SQLite's view), when it has one.
    pub pid_file: Option<PollerStatus>,
}

/// What the last sample saw.
#[derive(Default)]
pub(super) struct Sampled {
    pub points: VecDeque<Point>,
    pub pollers: Vec<PollerRow>,
    /// Where the poller list came from, for the page.
    pub source: &'static str,
    /// Why the last sample failed, if it did.
    pub error: Option<String>,
    /// When the last sample was taken (0: none yet).
    pub at_ms: u64,
    /// The overview's rows, when read (ms since the epoch), and why the
    /// paused queues are unknown, if they are.
    pub queues: Option<(u64, Vec<super::pages::QueueRow>, Option<String>)>,
    last_counts: HashMap<String, PollerCounts>,
}

pub(super) type Shared = Mutex<Sampled>;

fn key(r: &PollerReport) -> String {
    format!("{}/{}/{}/{}", r.host, r.pid, r.id, r.started_at_ms)
}

/// Starts the sampling task; it ends once `state` is dropped.
pub(super) fn spawn_sampler(state: &Arc<AppState>) {
    let weak: Weak<AppState> = Arc::downgrade(state);
    let every = state.config.sample_every;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            sample(&state).await;
            // The queue counts, only while a page looks (within 10 s).
            let viewed = state
                .last_view_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if now_ms().saturating_sub(viewed) < 10_000 {
                let (rows, err) = super::pages::read_queue_rows(&state).await;
                let mut s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
                s.queues = Some((now_ms(), rows, err));
            }
        }
    });
}

/// Takes one sample now.
pub(super) async fn sample(state: &AppState) {
    let wait = (state.config.sample_every / 2).min(Duration::from_millis(1000));
    let (rows, source, error) =
        collect(&*state.config.broker, state.config.pid_dir.as_deref(), wait).await;
    let now = now_ms();
    let mut s = state.sampled.lock().unwrap_or_else(|e| e.into_inner());
    if error.is_none() || !rows.is_empty() {
        let previous_at = s.at_ms;
        let mut total = PollerCounts::default();
        let mut next = HashMap::new();
        for r in rows.iter().filter_map(|r| r.report.as_ref()) {
            let k = key(r);
            let before = match s.last_counts.get(&k) {
                Some(c) => *c,
                // A poller seen for the first time: what it ran since the
                // last sample counts if it started after it.
                None if previous_at > 0 && r.started_at_ms >= previous_at => {
                    PollerCounts::default()
                }
                None => r.counts,
            };
            total.processed += r.counts.processed.saturating_sub(before.processed);
            total.failed += r.counts.failed.saturating_sub(before.failed);
            total.retried += r.counts.retried.saturating_sub(before.retried);
            total.dead += r.counts.dead.saturating_sub(before.dead);
            next.insert(k, r.counts);
        }
        if previous_at > 0 {
            let secs = (now.saturating_sub(previous_at) as f64 / 1000.0).max(0.001);
            s.points.push_back(Point {
                t: now,
                processed: total.processed as f64 / secs,
                failed: total.failed as f64 / secs,
                retried: total.retried as f64 / secs,
                dead: total.dead as f64 / secs,
            });
            let oldest = now.saturating_sub(KEEP.as_millis() as u64);
            while s.points.front().is_some_and(|p| p.t < oldest) {
                s.points.pop_front();
            }
        }
        s.last_counts = next;
        s.at_ms = now;
        s.pollers = rows;
    }
    s.source = source;
    s.error = error;
}

/// The pollers: from the broker when it offers a cross-machine view, else
/// from the PID directory and the report files beside it.
async fn collect(
    broker: &dyn Broker,
    pid_dir: Option<&Path>,
    wait: Duration,
) -> (Vec<PollerRow>, &'static str, Option<String>) {
    let from_broker =
        match tokio::time::timeout(wait + Duration::from_secs(5), broker.pollers(wait)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the broker did not answer the status request within 5s".to_string()),
        };
    match from_broker {
        Ok(Some(mut reports)) => {
            reports.sort_by(|a, b| (&a.host, &a.id, a.pid).cmp(&(&b.host, &b.id, b.pid)));
            let rows = reports
                .into_iter()
                .map(|r| PollerRow {
                    report: Some(r),
                    pid_file: None,
                })
                .collect();
            let source = if broker.url().starts_with("sqlite:") {
                "the poller reports in the SQLite file (this machine)"
            } else {
                "the broker (every machine)"
            };
            (rows, source, None)
        }
        Ok(None) => match pid_dir {
            Some(dir) => {
                let dir = dir.to_path_buf();
                let rows = tokio::task::spawn_blocking(move || from_pid_dir(&dir))
                    .await
                    .unwrap_or_default();
                (rows, "the PID directory (this machine)", None)
            }
            None => (Vec::new(), "nothing: no PID directory was given", None),
        },
        Err(e) => (Vec::new(), "status requests to the broker", Some(e)),
    }
}

fn from_pid_dir(dir: &Path) -> Vec<PollerRow> {
    list_pollers(dir)
        .into_iter()
        .map(|p| {
            let report = match (p.alive, p.pid) {
                (true, Some(pid)) => read_report(&pid_path(dir, &p.id), pid),
                _ => None,
            };
            PollerRow {
                report,
                pid_file: Some(p),
            }
        })
        .collect()
}
