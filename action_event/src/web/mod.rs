//! The dashboard: queues, pollers, events and dead letters in a browser,
//! plus Prometheus `/metrics`, on [axum](https://docs.rs/axum).
//!
//! Two ways to run it:
//!
//! - inside an app's own axum server: [`router`] gives a [`Router`] to
//!   `nest` (links follow the prefix it is nested under);
//! - standalone: `poller web --bind 127.0.0.1:9188` (the app's poller
//!   binary, so the Events page shows the app's events).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use action_event::web::{Auth, Dashboard};
//! let broker = action_event::broker::connect("sqlite://action_event.db").await?;
//! let jobs = Dashboard::new(broker)
//!     .pid_dir("tmp/pids")
//!     .auth(Auth::Bearer("s3cret".into()))
//!     .router();
//! let app = action_event::web::axum::Router::new().nest("/jobs", jobs);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! action_event::web::axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Pages: **Overview** (per queue in priority order: waiting, scheduled,
//! in flight, age of the oldest waiting event, paused; a live chart of
//! processed / failed / retried / dead per second over the last 15
//! minutes), **Pollers**, **Events** (the registry, chains resolved),
//! **Dead letters** (filter, show, retry, purge) and **Scheduled** (the
//! periodic events with their schedule, last tick queued and next tick;
//! then the delayed and retrying events where the backend can list them:
//! SQLite; RabbitMQ cannot without consuming).
//!
//! Where the numbers come from: queue counts from the broker on each
//! request ([`Broker::depth`]); pollers and the chart from the pollers' own
//! reports ([`PollerReport`](crate::broker::PollerReport)), which the
//! dashboard samples every 2 seconds: on RabbitMQ through status requests
//! ([`Broker::pollers`]), on PostgreSQL and SQLite from the report each
//! poller rewrites every second in the database (on SQLite every poller of
//! the file, with or without a PID file); the PID directory's report files
//! only where the broker has no view. The chart's history starts when the
//! dashboard starts.
//!
//! Security: everything that changes state is a POST carrying a CSRF token
//! (a random value made when the router is built, put in every form);
//! [`Auth`] adds HTTP basic auth or a bearer token to every route, `/metrics`
//! included; [`Dashboard::read_only`] refuses every POST. Broker URLs are
//! shown with their passwords redacted. `poller web` binds 127.0.0.1 unless
//! told otherwise.

mod actions;
mod assets;
mod auth;
mod html;
mod live;
mod pages;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::broker::Broker;
pub use auth::Auth;
/// The axum this dashboard is built with, for nesting [`Dashboard::router`]
/// without a version mismatch.
pub use axum;

/// How often the dashboard samples the pollers' reports by default.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How the dashboard is set up; [`Dashboard::router`] builds it.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
/// let router = action_event::web::Dashboard::new(broker)
///     .pid_dir("tmp/pids")
///     .queues(["high", "medium", "low"])
///     .read_only(true)
///     .router();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dashboard {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) pid_dir: Option<PathBuf>,
    pub(crate) queues: Option<Vec<String>>,
    pub(crate) auth: Option<Auth>,
    pub(crate) read_only: bool,
    pub(crate) sample_every: Duration,
    pub(crate) metrics: bool,
}

impl Dashboard {
    /// A dashboard of `broker`: no auth, read-write, `/metrics` served.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
    /// let d = action_event::web::Dashboard::new(broker);
    /// # Ok(()) }
    /// ```
    pub fn new(broker: Arc<dyn Broker>) -> Dashboard {
        Dashboard {
            broker,
            pid_dir: None,
            queues: None,
            auth: None,
            read_only: false,
            sample_every: DEFAULT_SAMPLE_EVERY,
            metrics: true,
        }
    }

    /// The pollers' PID directory (`--pid-dir`, `tmp/pids` by default in
    /// the CLI): where the Pollers page finds SQLite's pollers.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # let broker = action_event::broker::connect("sqlite://a.db").await?;
    /// let d = action_event::web::Dashboard::new(broker).pid_dir("tmp/pids");
    /// # Ok(()) }
    /// ```
    pub fn pid_dir(mut self, dir: impl Into<PathBuf>) -> Dashboard {
        self.pid_dir = Some(dir.into());
        self
    }

    /// The queues the Overview shows, highest priority first. Without it:
    /// the queues the live pollers serve in their order, then `high`,
    /// `medium`, `low`, then those of the registry and those the broker
    /// lists, by name.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # let broker = action_event::broker::connect("sqlite://a.db").await?;
    /// let d = action_event::web::Dashboard::new(broker).queues(["critical", "default"]);
    /// # Ok(()) }
    /// ```
    pub fn queues<I, S>(mut self, queues: I) -> Dashboard
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = Some(queues.into_iter().map(Into::into).collect());
        self
    }

    /// Every request must carry these credentials (else 401).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # let broker = action_event::broker::connect("sqlite://a.db").await?;
    /// use action_event::web::Auth;
    /// let d = action_event::web::Dashboard::new(broker)
    ///     .auth(Auth::Basic { user: "ops".into(), password: "pw".into() });
    /// # Ok(()) }
    /// ```
    pub fn auth(mut self, auth: Auth) -> Dashboard {
        self.auth = Some(auth);
        self
    }

    /// With `true`, the dashboard shows but changes nothing: no buttons,
    /// and every POST is refused with 403.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # let broker = action_event::broker::connect("sqlite://a.db").await?;
    /// let d = action_event::web::Dashboard::new(broker).read_only(true);
    /// # Ok(()) }
    /// ```
    pub fn read_only(mut self, yes: bool) -> Dashboard {
        self.read_only = yes;
        self
    }

    /// How often the pollers' reports are sampled for the Pollers page and
    /// the chart ([`DEFAULT_SAMPLE_EVERY`]); at least 200 ms.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # let broker = action_event::broker::connect("sqlite://a.db").await?;
    /// let d = action_event::web::Dashboard::new(broker).sample_every(std::time::Duration::from_secs(5));
    /// # Ok(()) }
    /// ```
    pub fn sample_every(mut self, every: Duration) -> Dashboard {
        self.sample_every = every.max(Duration::from_millis(200));
        self
    }

    /// Whether the router answers `GET /metrics` (Prometheus: queue depths
    /// and pollers alive, read from the broker on each scrape). On by
    /// default; turn it off when the app serves its own.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # let broker = action_event::broker::connect("sqlite://a.db").await?;
    /// let d = action_event::web::Dashboard::new(broker).metrics(false);
    /// # Ok(()) }
    /// ```
    pub fn metrics(mut self, yes: bool) -> Dashboard {
        self.metrics = yes;
        self
    }

    /// The dashboard's routes. Must be called inside a Tokio runtime: it
    /// starts the task that samples the pollers, which stops when the
    /// router (every clone of it) is dropped.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// # let broker = action_event::broker::connect("sqlite://a.db").await?;
    /// let app = action_event::web::axum::Router::new().nest("/jobs", action_event::web::Dashboard::new(broker).router());
    /// # Ok(()) }
    /// ```
    pub fn router(self) -> Router {
        let state = Arc::new(pages::AppState::new(self));
        stats::spawn_sampler(&state);
        let mut app = Router::new()
            .route("/", get(pages::overview::page))
            .route("/pollers", get(pages::pollers::page))
            .route("/events", get(pages::events::page))
            .route("/dead", get(pages::dead::list))
            .route("/dead/{id}", get(pages::dead::show))
            .route("/scheduled", get(pages::scheduled::page))
            .route("/api/live", get(live::live))
            .route("/assets/{file}", get(assets::asset))
            .route("/dead/retry", post(actions::dead_retry))
            .route("/dead/purge", post(actions::dead_purge))
            .route("/queues/{queue}/pause", post(actions::pause))
            .route("/queues/{queue}/resume", post(actions::resume));
        if state.config.metrics {
            app = app.route("/metrics", get(live::metrics));
        }
        app.fallback(pages::not_found)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::check,
            ))
            .with_state(state)
    }
}

/// The dashboard of `broker` with the defaults ([`Dashboard::new`]), ready to nest.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
/// let app = action_event::web::axum::Router::new().nest("/jobs", action_event::web::router(broker));
/// action_event::web::axum::serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?, app).await?;
/// # Ok(()) }
/// ```
pub fn router(broker: Arc<dyn Broker>) -> Router {
    Dashboard::new(broker).router()
}
