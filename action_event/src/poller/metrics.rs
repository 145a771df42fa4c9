//! Prometheus metrics of one poller (`poller --metrics 127.0.0.1:9187`).
//!
//! Counters and the processing-time histogram are kept by the poller as it
//! settles events. Queue depth, the age of the oldest waiting event and the
//! number of pollers alive are not counted by one process: they are read on
//! every scrape, from the broker ([`Broker::depth`]) and the PID directory.
//!
//! Served in the OpenMetrics text format (Prometheus reads it) on axum:
//! [`MetricsEndpoint::router`] to nest in an app's server, or
//! [`MetricsEndpoint::serve`] on a listener of its own (`--metrics ADDR`).
//! The dashboard's server (`poller web`) answers `/metrics` too, with the
//! broker's gauges.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::broker::Broker;

type EventQueue = [(&'static str, String); 2];
type OneLabel = [(&'static str, String); 1];

/// Upper bounds, in seconds, of the processing-time histogram's buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// How one run of an event ended, as the metrics count it.
///
/// ```
/// use action_event::poller::{Metrics, Observed};
/// let m = Metrics::new();
/// m.observe("hello_world", "high", Observed::Completed, std::time::Duration::from_millis(3));
/// assert!(m.encode().contains(r#"action_event_events_processed_total{event="hello_world",queue="high"} 1"#));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The chain and `process` returned Ok.
    Completed,
    /// A filter halted it.
    Halted,
    /// It failed and was scheduled for another attempt.
    Retried,
    /// It failed and was moved to the dead letters.
    Dead,
}

/// The metrics of one poller. Names (all prefixed `action_event_`):
///
/// | metric | labels | what |
/// | --- | --- | --- |
/// | `events_processed_total` | event, queue | runs finished, whatever the outcome |
/// | `events_failed_total` | event, queue | runs that failed (retried or dead) |
/// | `events_retried_total` | event, queue | failures scheduled for another attempt |
/// | `events_dead_total` | event, queue | events moved to the dead letters |
/// | `events_halted_total` | event, queue | events a before filter halted |
/// | `event_duration_seconds` | event | histogram of run time: filters, `process`, settling with the broker |
/// | `events_waiting` | queue | events ready now (from the broker, at scrape) |
/// | `events_scheduled` | queue | events not due yet: delayed or retrying (SQLite only: RabbitMQ's delay queues are shared) |
/// | `oldest_waiting_age_seconds` | queue | age of the oldest ready event, 0 when none (broker, at scrape) |
/// | `pollers_alive` | | pollers of this machine's PID dir that run, this one included when a poller serves the metrics (at scrape) |
///
/// ```
/// use action_event::poller::{Metrics, Observed};
/// use std::time::Duration;
/// let m = Metrics::new();
/// m.observe("send_email", "low", Observed::Retried, Duration::from_millis(40));
/// let text = m.encode();
/// assert!(text.contains(r#"action_event_events_failed_total{event="send_email",queue="low"} 1"#));
/// assert!(text.contains(r#"action_event_event_duration_seconds_bucket{le="0.05",event="send_email"} 1"#));
/// assert!(text.ends_with("# EOF\n"));
/// ```
pub struct Metrics {
    registry: Registry,
    processed: Family<EventQueue, Counter>,
    failed: Family<EventQueue, Counter>,
    retried: Family<EventQueue, Counter>,
    dead: Family<EventQueue, Counter>,
    halted: Family<EventQueue, Counter>,
    duration: Family<OneLabel, Histogram>,
    waiting: Family<OneLabel, Gauge>,
    scheduled: Family<OneLabel, Gauge>,
    oldest_age: Family<OneLabel, Gauge<f64, AtomicU64>>,
    pollers_alive: Gauge,
    /// Whether the process serving these metrics is a poller that counts
    /// in `pollers_alive` even without a PID file (false: the dashboard).
    in_a_poller: bool,
    /// The `processed` counter and duration histogram of the (event, queue)
    /// pairs seen, shared with their families: a completed run counts
    /// without building label `String`s or hashing them (SipHash over
    /// both names was ~2,000 instructions per event). A few pairs per
    /// poller; looked up by comparing names.
    hot: std::sync::Mutex<Vec<Hot>>,
}

/// See [`Metrics::hot`].
struct Hot {
    event: String,
    queue: String,
    processed: Counter,
    duration: Histogram,
}

/// Past this many pairs, new ones are counted through the families only.
const HOT_MAX: usize = 64;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, every family registered.
    ///
    /// ```
    /// let text = action_event::poller::Metrics::new().encode();
    /// assert!(text.contains("# TYPE action_event_pollers_alive gauge"));
    /// ```
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("action_event");
        let processed = Family::<EventQueue, Counter>::default();
        let failed = Family::<EventQueue, Counter>::default();
        let retried = Family::<EventQueue, Counter>::default();
        let dead = Family::<EventQueue, Counter>::default();
        let halted = Family::<EventQueue, Counter>::default();
        let duration = Family::<OneLabel, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let waiting = Family::<OneLabel, Gauge>::default();
        let scheduled = Family::<OneLabel, Gauge>::default();
        let oldest_age = Family::<OneLabel, Gauge<f64, AtomicU64>>::default();
        let pollers_alive = Gauge::default();
        registry.register(
            "events_processed",
            "Runs finished, whatever the outcome",
            processed.clone(),
        );
        registry.register(
            "events_failed",
            "Runs that failed (an Err, a panic, a timeout, bad params, an unknown name)",
            failed.clone(),
        );
        registry.register(
            "events_retried",
            "Failures scheduled for another attempt",
            retried.clone(),
        );
        registry.register(
            "events_dead",
            "Events moved to the dead letters",
            dead.clone(),
        );
        registry.register(
            "events_halted",
            "Events a before filter halted",
            halted.clone(),
        );
        registry.register(
            "event_duration_seconds",
            "Time one run took: filters, process and settling with the broker",
            duration.clone(),
        );
        registry.register(
            "events_waiting",
            "Events ready in the queue, due and not held by a poller (from the broker)",
            waiting.clone(),
        );
        registry.register(
            "events_scheduled",
            "Events of the queue not due yet: delayed or waiting for a retry (from the broker; SQLite only)",
            scheduled.clone(),
        );
        registry.register(
            "oldest_waiting_age_seconds",
            "Age of the oldest waiting event of the queue, 0 when none (from the broker)",
            oldest_age.clone(),
        );
        registry.register(
            "pollers_alive",
            "Pollers of this machine's PID dir that are running, this one included",
            pollers_alive.clone(),
        );
        Metrics {
            registry,
            processed,
            failed,
            retried,
            dead,
            halted,
            duration,
            waiting,
            scheduled,
            oldest_age,
            pollers_alive,
            in_a_poller: true,
            hot: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The metrics of a process that serves the dashboard and is no poller
    /// itself (`poller web`): `pollers_alive` counts the PID directory's
    /// running pollers only.
    pub(crate) fn outside_a_poller() -> Self {
        Metrics {
            in_a_poller: false,
            ..Self::new()
        }
    }

    /// Counts one finished run of `event` from `queue`, which took `elapsed`.
    pub fn observe(&self, event: &str, queue: &str, what: Observed, elapsed: Duration) {
        if what == Observed::Completed && self.observe_hot(event, queue, elapsed) {
            return;
        }
        let labels: EventQueue = [("event", event.to_string()), ("queue", queue.to_string())];
        self.processed.get_or_create(&labels).inc();
        match what {
            Observed::Completed => {}
            Observed::Halted => {
                self.halted.get_or_create(&labels).inc();
            }
            Observed::Retried => {
                self.failed.get_or_create(&labels).inc();
                self.retried.get_or_create(&labels).inc();
            }
            Observed::Dead => {
                self.failed.get_or_create(&labels).inc();
                self.dead.get_or_create(&labels).inc();
            }
        }
        self.duration
            .get_or_create(&[("event", event.to_string())])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a completed run through [`Metrics::hot`]; false when the
    /// pair is not kept there (then the caller counts it).
    fn observe_hot(&self, event: &str, queue: &str, elapsed: Duration) -> bool {
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let i = match hot
            .iter()
            .position(|h| h.event == event && h.queue == queue)
        {
            Some(i) => i,
            None if hot.len() < HOT_MAX => {
                let labels: EventQueue =
                    [("event", event.to_string()), ("queue", queue.to_string())];
                hot.push(Hot {
                    event: event.to_string(),
                    queue: queue.to_string(),
                    processed: self.processed.get_or_create(&labels).clone(),
                    duration: self
                        .duration
                        .get_or_create(&[("event", event.to_string())])
                        .clone(),
                });
                hot.len() - 1
            }
            None => return false,
        };
        hot[i].processed.inc();
        hot[i].duration.observe(elapsed.as_secs_f64());
        true
    }

    /// Reads the depth of each of `queues` from `broker` and the pollers
    /// alive in `pid_dir`, for the gauges. A broker that fails or takes
    /// longer than 5s leaves that queue's gauges as they were (logged).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
    /// let m = action_event::poller::Metrics::new();
    /// m.refresh(&*broker, &["high".to_string()], None).await;
    /// assert!(m.encode().contains("action_event_events_waiting{queue=\"high\"}"));
    /// # Ok(()) }
    /// ```
    pub async fn refresh(
        &self,
        broker: &dyn Broker,
        queues: &[String],
        pid_dir: Option<&std::path::Path>,
    ) {
        for q in queues {
            match tokio::time::timeout(Duration::from_secs(5), broker.depth(q)).await {
                Ok(Ok(d)) => {
                    let label = [("queue", q.clone())];
                    self.waiting
                        .get_or_create(&label)
                        .set(i64::try_from(d.waiting).unwrap_or(i64::MAX));
                    if let Some(s) = d.scheduled {
                        self.scheduled
                            .get_or_create(&label)
                            .set(i64::try_from(s).unwrap_or(i64::MAX));
                    }
                    self.oldest_age
                        .get_or_create(&label)
                        .set(d.oldest_age.map(|a| a.as_secs_f64()).unwrap_or(0.0));
                }
                Ok(Err(e)) => tracing::warn!("metrics: depth of queue `{q}`: {e}"),
                Err(_) => tracing::warn!("metrics: depth of queue `{q}` took over 5s"),
            }
        }
        let me = std::process::id();
        let (alive, has_me) = match pid_dir {
            Some(dir) => {
                let pollers = super::pidfile::list_pollers(dir);
                let alive: Vec<u32> = pollers
                    .iter()
                    .filter(|p| p.alive)
                    .filter_map(|p| p.pid)
                    .collect();
                (alive.len(), alive.contains(&me))
            }
            None => (0, false),
        };
        let n = alive + usize::from(self.in_a_poller && !has_me);
        self.pollers_alive.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("metrics: cannot encode: {e}");
        }
        out
    }
}

/// Serves [`Metrics`] over HTTP: `GET /metrics` refreshes the broker gauges
/// and answers the text format; anything else is a 404.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use action_event::poller::{Metrics, MetricsEndpoint};
/// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
/// let endpoint = MetricsEndpoint {
///     metrics: Arc::new(Metrics::new()),
///     broker,
///     queues: vec!["high".into(), "medium".into(), "low".into()],
///     pid_dir: None,
/// };
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9187").await?;
/// tokio::spawn(endpoint.serve(listener));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MetricsEndpoint {
    /// What the poller counts.
    pub metrics: Arc<Metrics>,
    /// Where queue depths are read.
    pub broker: Arc<dyn Broker>,
    /// The queues whose depth is reported.
    pub queues: Vec<String>,
    /// The PID dir whose pollers are counted as alive.
    pub pid_dir: Option<PathBuf>,
}

impl MetricsEndpoint {
    /// `GET /metrics` (and `/`, which says where the metrics are) as a
    /// router an app can merge into its own server.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # use std::sync::Arc;
    /// # let broker = action_event::broker::connect("sqlite://action_event.db").await?;
    /// # let endpoint = action_event::poller::MetricsEndpoint { metrics: Arc::default(), broker, queues: vec![], pid_dir: None };
    /// let app = axum::Router::new().merge(endpoint.router());
    /// # Ok(()) }
    /// ```
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .route(
                "/",
                get(|| async { "action_event poller: metrics at /metrics\n" }),
            )
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    "not found: metrics are at /metrics\n",
                )
            })
            .with_state(Arc::new(self))
    }

    /// Serves [`MetricsEndpoint::router`] until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        if let Err(e) = axum::serve(listener, self.router()).await {
            tracing::warn!("metrics: the server stopped: {e}");
        }
    }
}

async fn scrape(State(me): State<Arc<MetricsEndpoint>>) -> impl IntoResponse {
    me.metrics
        .refresh(&*me.broker, &me.queues, me.pid_dir.as_deref())
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        me.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_where_they_belong() {
        let m = Metrics::new();
        let ms = Duration::from_millis(2);
        m.observe("a", "high", Observed::Completed, ms);
        m.observe("a", "high", Observed::Halted, ms);
        m.observe("a", "high", Observed::Retried, ms);
        m.observe("a", "high", Observed::Dead, ms);
        let t = m.encode();
        for (name, n) in [
            ("processed", 4),
            ("failed", 2),
            ("retried", 1),
            ("dead", 1),
            ("halted", 1),
        ] {
            let line =
                format!("action_event_events_{name}_total{{event=\"a\",queue=\"high\"}} {n}");
            assert!(t.contains(&line), "{line} in\n{t}");
        }
        assert!(
            t.contains("action_event_event_duration_seconds_count{event=\"a\"} 4"),
            "{t}"
        );
    }
}
