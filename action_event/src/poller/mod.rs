//! The generic poller: takes events from the broker in strict priority
//! order, runs them through the registry, and settles each one (ack, retry
//! with backoff, or dead letter).
//!
//! Most apps use [`main`] from their own `src/bin/poller.rs` (the binary
//! must link the app's events); [`Poller`] is the same loop as a library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::broker::{Broker, DeadEvent, Delivery, InFlight, PollerReport, Presence};
use crate::client::Client;
use crate::envelope::{AttemptError, Envelope, now_ms};
use crate::registry::{DEFAULT_RETRIES, FailureKind, Outcome, Registry};
use crate::{Error, State};

mod cli;
mod generate;
#[cfg(feature = "metrics")]
mod metrics;
mod pidfile;

pub use cli::{main, main_with_args};
pub use generate::{Action, EventNames, generate_event};
#[cfg(feature = "metrics")]
pub use metrics::{DURATION_BUCKETS, Metrics, MetricsEndpoint, Observed};
pub use pidfile::{PollerInfo, PollerStatus, list_pollers, pid_path, process_alive};

/// The queues a poller serves when none are given: these, then any other
/// queue a registered event names.
pub const DEFAULT_QUEUES: [&str; 3] = ["high", "medium", "low"];

/// How long a failed event waits before its next attempt: `base * 2^(n-1)`,
/// capped at `max`, times a random factor in `[1 - jitter, 1 + jitter]`.
///
/// ```
/// use std::time::Duration;
/// use action_event::poller::RetryPolicy;
/// let p = RetryPolicy { base: Duration::from_secs(2), max: Duration::from_secs(3600), jitter: 0.0 };
/// assert_eq!(p.delay(1), Duration::from_secs(2));
/// assert_eq!(p.delay(3), Duration::from_secs(8));
/// assert_eq!(p.delay(40), Duration::from_secs(3600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Spread, 0.0 to 1.0: 0.25 means ±25%.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 2s, 4s, 8s ... up to one hour, ±25%: the default ten retries span
    /// about 34 minutes.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            jitter: 0.25,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(40);
        let raw = self.base.as_secs_f64() * 2f64.powi(exp as i32);
        let capped = raw.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            1.0 + rand::random_range(-jitter..=jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

/// How a poller runs.
///
/// ```
/// use action_event::poller::PollerConfig;
/// let config = PollerConfig { concurrency: 8, ..PollerConfig::default() };
/// assert_eq!(config.queues, vec!["high", "medium", "low"]);
/// ```
#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// Queues, highest priority first.
    pub queues: Vec<String>,
    /// Events run at once. A slot frees when an event's handler returns;
    /// its ack then finishes in the background (a stop still waits for it).
    pub concurrency: usize,
    /// Exit once every queue is empty and nothing is in hand.
    pub exit_when_empty: bool,
    /// On a stop, how long events in hand may take before they are given back.
    pub shutdown_timeout: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// How many times an event whose name no handler of this binary knows
    /// is retried before it goes to the dead letters (default
    /// [`crate::DEFAULT_RETRIES`]): a rolling deploy may bring its handler, so it
    /// is not dead-lettered at once.
    pub unknown_retries: u32,
    /// How long one `take` waits when nothing is ready.
    pub idle_wait: Duration,
    /// The PID file this poller owns: when it stops naming this process the
    /// poller finishes what it has in hand and exits.
    pub pid_file: Option<PathBuf>,
    /// Who this poller is (id, host, queues, concurrency...) in the reports
    /// `poller status` gets from the broker ([`Broker::pollers`]); the CLI's
    /// `start` fills it. `None`: id `-`, this host and pid, `queues`,
    /// `concurrency` and the broker's URL.
    pub identity: Option<PollerInfo>,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            queues: DEFAULT_QUEUES.iter().map(|q| q.to_string()).collect(),
            concurrency: 1,
            exit_when_empty: false,
            shutdown_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            unknown_retries: DEFAULT_RETRIES,
            idle_wait: Duration::from_millis(500),
            pid_file: None,
            identity: None,
        }
    }
}

/// Asks a running [`Poller`] to stop.
///
/// ```
/// let stop = action_event::poller::Shutdown::new();
/// stop.graceful();   // finish what is in hand, take nothing new
/// stop.immediate();  // give back what is in hand at once
/// ```
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<u8>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A handle that has not asked for anything yet.
    pub fn new() -> Self {
        Shutdown {
            tx: watch::Sender::new(0),
        }
    }
    /// Stop taking events; finish those in hand within the shutdown timeout.
    pub fn graceful(&self) {
        self.tx.send_if_modified(|v| {
            let changed = *v < 1;
            *v = (*v).max(1);
            changed
        });
    }
    /// Stop now: events in hand are given back to their queues.
    pub fn immediate(&self) {
        self.tx.send_replace(2);
    }
    fn level(&self) -> u8 {
        *self.tx.borrow()
    }
}

/// Why a poller stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// `exit_when_empty` and nothing was left.
    Empty,
    /// A [`Shutdown`] (a signal, in the CLI).
    Stopped,
    /// Another poller took over its PID file.
    HandedOver {
        /// The PID the file names now.
        new_pid: u32,
    },
    /// Its PID file was removed (`poller stop`).
    PidFileRemoved,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Events whose chain and `process` succeeded.
    pub completed: u64,
    /// Events a filter halted.
    pub halted: u64,
    /// Failures that were scheduled for another attempt.
    pub retried: u64,
    /// Events moved to the dead letters.
    pub dead: u64,
    /// Events given back unfinished (hard stop).
    pub released: u64,
    /// Why it stopped.
    pub exit: Option<ExitReason>,
}

#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    halted: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    released: AtomicU64,
}

/// The poller loop as a library.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// use action_event::poller::{Poller, PollerConfig, Shutdown};
/// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
/// let config = PollerConfig { exit_when_empty: true, ..PollerConfig::default() };
/// let summary = Poller::new(broker, action_event::State::new(), config)?
///     .run(Shutdown::new())
///     .await?;
/// println!("{} completed", summary.completed);
/// # Ok(()) }
/// ```
pub struct Poller {
    shared: Arc<Shared>,
    config: PollerConfig,
}

struct Shared {
    broker: Arc<dyn Broker>,
    registry: &'static Registry,
    state: Arc<State>,
    client: Client,
    retry: RetryPolicy,
    unknown_retries: u32,
    tally: Tally,
    #[cfg(feature = "metrics")]
    metrics: Arc<Metrics>,
    in_flight: InFlightMap,
}

/// The events running now, by a sequence number.
#[derive(Clone, Default)]
struct InFlightMap(Arc<Mutex<(u64, BTreeMap<u64, InFlight>)>>);

impl InFlightMap {
    /// Records an event as running until the guard drops (even on a panic
    /// or an abort of its task).
    fn enter(&self, event: InFlight) -> InFlightGuard {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let key = g.0;
        g.1.insert(key, event);
        InFlightGuard {
            map: self.clone(),
            key,
        }
    }

    fn list(&self) -> Vec<InFlight> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.1.values().cloned().collect()
    }
}

struct InFlightGuard {
    map: InFlightMap,
    key: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut g = self.map.0.lock().unwrap_or_else(|e| e.into_inner());
        g.1.remove(&self.key);
    }
}

/// This poller as status requests see it: its identity and what runs now.
struct PollerPresence {
    info: PollerInfo,
    in_flight: InFlightMap,
}

impl Presence for PollerPresence {
    fn report(&self) -> PollerReport {
        let i = &self.info;
        PollerReport {
            id: i.id.clone(),
            host: i.host.clone(),
            pid: i.pid,
            queues: i.queues.clone(),
            concurrency: i.concurrency,
            broker: i.broker.clone(),
            started_at_ms: i.started_at_ms,
            in_flight: self.in_flight.list(),
        }
    }
}

#[cfg(feature = "metrics")]
impl Shared {
    /// Counts one settled run for the metrics (see [`Metrics`]).
    fn observe(&self, event: &str, queue: &str, what: Observed, started: Instant) {
        self.metrics.observe(event, queue, what, started.elapsed());
    }
}

impl Poller {
    /// A poller on `broker`; fails if the registry of this binary is
    /// inconsistent or empty.
    pub fn new(
        broker: Arc<dyn Broker>,
        state: State,
        config: PollerConfig,
    ) -> Result<Poller, Error> {
        let registry = crate::registry()?;
        if registry.events().next().is_none() {
            return Err(Error::Registry(
                "this binary has no events: is the crate that defines them linked? A poller whose events live in another crate needs `use my_events as _;`".into(),
            ));
        }
        if config.queues.is_empty() {
            return Err(Error::Registry("a poller needs at least one queue".into()));
        }
        let client = Client::from_broker(broker.clone());
        Ok(Poller {
            shared: Arc::new(Shared {
                broker,
                registry,
                state: Arc::new(state),
                client,
                retry: config.retry,
                unknown_retries: config.unknown_retries,
                tally: Tally::default(),
                #[cfg(feature = "metrics")]
                metrics: Arc::new(Metrics::new()),
                in_flight: InFlightMap::default(),
            }),
            config: PollerConfig {
                concurrency: config.concurrency.max(1),
                ..config
            },
        })
    }

    /// The metrics this poller keeps as it runs; serve them with
    /// [`MetricsEndpoint`] (the CLI's `--metrics ADDR` does).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// use action_event::poller::{Poller, PollerConfig};
    /// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
    /// let poller = Poller::new(broker, action_event::State::new(), PollerConfig::default())?;
    /// let metrics = poller.metrics();
    /// println!("{}", metrics.encode());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Runs until `shutdown`, a PID-file handoff, or (with
    /// `exit_when_empty`) an empty broker.
    ///
    /// The loop runs as a task of the current Tokio runtime, beside the
    /// tasks that run the events: awaited from `block_on` it would stay on
    /// that thread, and every event would cross threads twice. Dropping the
    /// returned future stops it, as before.
    pub async fn run(self, shutdown: Shutdown) -> Result<RunSummary, Error> {
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let task = tokio::spawn(self.run_loop(shutdown));
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down under it.
            Err(e) => Err(Error::io(
                "the poller task stopped",
                std::io::Error::other(e),
            )),
        }
    }

    async fn run_loop(self, shutdown: Shutdown) -> Result<RunSummary, Error> {
        let Poller { shared, config } = self;
        tracing::info!("Processing queues: {}", config.queues.join(","));
        for line in shared.registry.describe().lines() {
            tracing::debug!("event {line}");
        }
        let slots = Arc::new(Semaphore::new(config.concurrency));
        let (hard_tx, hard_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut stop_rx = shutdown.tx.subscribe();
        let handoff = config.pid_file.clone().map(watch_pid_file);
        let mut broker_backoff = Duration::from_millis(100);
        let mut empty_confirmed = false;
        let info = config.identity.clone().unwrap_or_else(|| PollerInfo {
            id: "-".into(),
            pid: std::process::id(),
            host: pidfile::hostname(),
            queues: config.queues.clone(),
            concurrency: config.concurrency,
            broker: shared.broker.url(),
            started_at_ms: now_ms(),
        });
        let presence = Arc::new(PollerPresence {
            info,
            in_flight: shared.in_flight.clone(),
        });
        if let Err(e) = shared.broker.announce(presence).await {
            tracing::warn!("This poller may not show in `poller status` of other machines: {e}");
        }

        let exit = loop {
            while tasks.try_join_next().is_some() {}
            if shutdown.level() >= 1 {
                break ExitReason::Stopped;
            }
            if let Some(reason) = handoff.as_ref().and_then(|h| h.borrow().clone()) {
                break reason;
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break ExitReason::Stopped,
                },
                _ = stop_rx.changed() => continue,
            };
            let wait = if config.exit_when_empty {
                Duration::from_millis(100)
            } else {
                config.idle_wait
            };
            match shared.broker.take(&config.queues, wait).await {
                Ok(Some(delivery)) => {
                    broker_backoff = Duration::from_millis(100);
                    empty_confirmed = false;
                    // Decoded and logged here, in take order: the log shows
                    // the order events start in, whatever the task scheduler does.
                    let envelope = Envelope::from_slice(&delivery.body);
                    let span = event_span(&delivery, envelope.as_ref().ok());
                    if let Ok(env) = &envelope {
                        span.in_scope(|| {
                            tracing::info!(
                                "Processing {}:{} ({})",
                                delivery.queue,
                                env.id,
                                env.params_json()
                            )
                        });
                    }
                    let running = shared.in_flight.enter(InFlight {
                        id: envelope.as_ref().map_or("?".into(), |e| e.id.to_string()),
                        name: envelope.as_ref().map_or("?".into(), |e| e.name.clone()),
                        queue: delivery.queue.clone(),
                        started_at_ms: now_ms(),
                    });
                    let shared = shared.clone();
                    let hard = hard_rx.clone();
                    tasks.spawn(
                        async move {
                            run_one(&shared, delivery, envelope, hard, permit).await;
                            drop(running);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    drop(permit);
                    if config.exit_when_empty
                        && slots.available_permits() == config.concurrency
                        && tasks.is_empty()
                    {
                        // A `take` that found nothing is not proof of an
                        // empty broker (RabbitMQ may still be setting up a
                        // consumer, or pushing a message): the broker's own
                        // count must say so too, then one more look serves
                        // anything that arrived meanwhile.
                        if empty_confirmed {
                            break ExitReason::Empty;
                        }
                        empty_confirmed = nothing_ready(&*shared.broker, &config.queues).await;
                        continue;
                    }
                    if config.exit_when_empty {
                        // Something is in hand: let it finish (it may queue more).
                        tokio::select! {
                            _ = tasks.join_next() => {},
                            _ = stop_rx.changed() => {},
                        }
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(
                        "Broker error while taking events: {e}; retrying in {}",
                        humantime::format_duration(broker_backoff)
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(broker_backoff) => {},
                        _ = stop_rx.changed() => {},
                    }
                    broker_backoff = (broker_backoff * 2).min(Duration::from_secs(10));
                }
            }
        };

        // Taking no more: what the broker took ahead goes to other pollers now.
        if let Err(e) = shared.broker.give_back().await {
            tracing::warn!(
                "Events taken ahead were not given back (they come back by themselves: SQLite when their lease lapses): {e}"
            );
        }
        match &exit {
            ExitReason::Empty => tracing::info!("All queues are empty; exiting"),
            ExitReason::Stopped => {}
            ExitReason::HandedOver { new_pid } => tracing::info!(
                "PID file now names pid {new_pid}: finishing {} event(s) in hand and exiting",
                tasks.len()
            ),
            ExitReason::PidFileRemoved => tracing::info!(
                "PID file removed: finishing {} event(s) in hand and exiting",
                tasks.len()
            ),
        }
        if !tasks.is_empty() {
            if exit == ExitReason::Stopped {
                tracing::info!(
                    "Stopping: finishing {} event(s) in hand (up to {})",
                    tasks.len(),
                    humantime::format_duration(config.shutdown_timeout)
                );
            }
            let deadline = tokio::time::sleep(config.shutdown_timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    next = tasks.join_next() => if next.is_none() { break },
                    _ = &mut deadline => {
                        tracing::warn!("Shutdown timeout: giving back {} unfinished event(s)", tasks.len());
                        let _ = hard_tx.send(true);
                        break;
                    }
                    _ = async { stop_rx.wait_for(|v| *v >= 2).await.map(|_| ()) } => {
                        tracing::warn!("Second stop: giving back {} unfinished event(s)", tasks.len());
                        let _ = hard_tx.send(true);
                        break;
                    }
                }
            }
            while tasks.join_next().await.is_some() {}
        }
        let t = &shared.tally;
        Ok(RunSummary {
            completed: t.completed.load(Ordering::Relaxed),
            halted: t.halted.load(Ordering::Relaxed),
            retried: t.retried.load(Ordering::Relaxed),
            dead: t.dead.load(Ordering::Relaxed),
            released: t.released.load(Ordering::Relaxed),
            exit: Some(exit),
        })
    }
}

/// Sends panic messages to the log (`tracing`, at ERROR) instead of raw
/// text on stderr, so a `--log-format json` log stays JSON and a panic in a
/// handler is logged inside the span of its event (name, id, attempt). A
/// backtrace is added when `RUST_BACKTRACE` asks for one. [`main`] calls it;
/// an app that runs [`Poller`] itself may call it too (it replaces the
/// process's panic hook).
///
/// The poller catches every panic of a filter or handler either way: it is
/// a failure of that event, retried like an `Err`.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = crate::registry::panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "panic", "panicked{location}: {message}\n{backtrace}");
        } else {
            // Not the poller's own target: the human format shows the
            // event's span in front of it.
            tracing::error!(target: "panic", "panicked{location}: {message}");
        }
    }));
}

/// Whether the broker counts no ready event in any of `queues` (for
/// `exit_when_empty`). A broker that cannot say is taken as "not empty".
async fn nothing_ready(broker: &dyn Broker, queues: &[String]) -> bool {
    for q in queues {
        match broker.depth(q).await {
            Ok(d) if d.waiting == 0 => {}
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!("Cannot count the events of queue `{q}`: {e}");
                return false;
            }
        }
    }
    true
}

/// Checks the PID file every 100 ms; the value becomes `Some` once it no
/// longer names this process.
fn watch_pid_file(path: PathBuf) -> watch::Receiver<Option<ExitReason>> {
    let (tx, rx) = watch::channel(None);
    let me = std::process::id();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let reason = match pidfile::read_pid(&path) {
                Some(pid) if pid == me => None,
                Some(pid) => Some(ExitReason::HandedOver { new_pid: pid }),
                None if path.exists() => None, // being rewritten
                None => Some(ExitReason::PidFileRemoved),
            };
            if let Some(reason) = reason {
                let _ = tx.send(Some(reason));
                return;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// The span every event runs in: its name, id, queue and attempt. The JSON
/// log carries these fields on every line logged while the event runs.
fn event_span(delivery: &Delivery, envelope: Option<&Envelope>) -> tracing::Span {
    match envelope {
        Some(env) => tracing::info_span!(
            "event",
            event = %env.name,
            id = %env.id,
            queue = %delivery.queue,
            attempt = env.attempt,
        ),
        None => tracing::info_span!(
            "event",
            event = "?",
            id = "?",
            queue = %delivery.queue,
            attempt = 0u32,
        ),
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

async fn run_one(
    shared: &Shared,
    delivery: Delivery,
    envelope: Result<Envelope, Error>,
    mut hard: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let envelope = match envelope {
        Ok(e) => e,
        Err(e) => {
            let body = String::from_utf8_lossy(&delivery.body).to_string();
            tracing::error!(
                "Unreadable message on {}: {e}; moved to the dead letters: {body:.200}",
                delivery.queue
            );
            let at = now_ms();
            let message = e.to_string();
            let dead = DeadEvent {
                id: crate::EventId::new().to_string(),
                name: serde_json::from_slice::<serde_json::Value>(&delivery.body)
                    .ok()
                    .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string)),
                queue: delivery.queue.clone(),
                body,
                attempts: 1,
                errors: vec![AttemptError {
                    attempt: 1,
                    at_ms: at,
                    message: message.clone(),
                }],
                reason: message,
                died_at_ms: at,
            };
            settle(shared, &delivery, Settle::Dead(dead)).await;
            shared.tally.dead.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            shared.observe("?", &delivery.queue, Observed::Dead, Instant::now());
            return;
        }
    };
    let tag = format!("{}:{}", delivery.queue, envelope.id);
    let started = Instant::now();
    // The task runs inside the event's span (see `event_span`), so
    // everything logged while it runs (its filters, its handler, a panic
    // through `log_panics`) carries the event.
    let dispatch =
        shared
            .registry
            .dispatch(&envelope, shared.state.clone(), Some(shared.client.clone()));
    let outcome = tokio::select! {
        o = dispatch => o,
        _ = async { hard.wait_for(|v| *v).await.map(|_| ()) } => {
            match shared.broker.release(&delivery).await {
                Ok(()) => tracing::warn!("Gave back {tag} unfinished; it will run again"),
                Err(e) => tracing::error!("Could not give back {tag}: {e}; it runs again when its lease lapses"),
            }
            shared.tally.released.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let elapsed = fmt_ms(started.elapsed());
    // A finished event frees its slot before its ack is on the wire: the
    // ack needs no handler, only a hop to the broker's I/O, and awaiting it
    // with the slot held would idle the slot (at concurrency 1, the whole
    // poller) for that hop. The task still ends after the ack, so a stop
    // waits for it. A retry or a dead letter keeps the slot until its
    // publish is confirmed, so failures do not pile up.
    if matches!(outcome, Outcome::Completed | Outcome::Halted { .. }) {
        drop(permit);
    }
    match outcome {
        Outcome::Completed => {
            settle(shared, &delivery, Settle::Ack).await;
            shared.tally.completed.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            shared.observe(
                &envelope.name,
                &delivery.queue,
                Observed::Completed,
                started,
            );
            tracing::info!("Finished processing {tag} ({elapsed})");
        }
        Outcome::Halted { filter } => {
            settle(shared, &delivery, Settle::Ack).await;
            shared.tally.halted.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            shared.observe(&envelope.name, &delivery.queue, Observed::Halted, started);
            tracing::info!("Halted {tag} by before_filter {filter} ({elapsed})");
        }
        Outcome::Failed(failure) => {
            let retries = shared
                .registry
                .get(&envelope.name)
                .map(|e| e.retries)
                .unwrap_or(shared.unknown_retries);
            let at = now_ms();
            let mut errors = envelope.errors.clone();
            errors.push(AttemptError {
                attempt: envelope.attempt,
                at_ms: at,
                message: failure.message.clone(),
            });
            let attempts_total = retries.saturating_add(1);
            if failure.kind.retryable() && envelope.attempt <= retries {
                let delay = shared.retry.delay(envelope.attempt);
                tracing::error!(
                    "Failed processing {tag} (attempt {} of {attempts_total}, {elapsed}): {}; retrying in {}",
                    envelope.attempt,
                    failure.message,
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                );
                let mut next = envelope.clone();
                next.attempt += 1;
                next.errors = errors;
                next.run_at_ms = Some(at.saturating_add(delay.as_millis() as u64));
                settle(shared, &delivery, Settle::Retry(next, delay)).await;
                shared.tally.retried.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                shared.observe(&envelope.name, &delivery.queue, Observed::Retried, started);
            } else {
                let why = if failure.kind == FailureKind::BadParams {
                    "retrying cannot help"
                } else {
                    "no retries left"
                };
                tracing::error!(
                    "Failed processing {tag} (attempt {} of {attempts_total}, {elapsed}): {}; {why}, moved to the dead letters",
                    envelope.attempt,
                    failure.message
                );
                let dead = DeadEvent {
                    id: envelope.id.to_string(),
                    name: Some(envelope.name.clone()),
                    queue: envelope.queue.clone(),
                    body: String::from_utf8_lossy(&delivery.body).to_string(),
                    attempts: envelope.attempt,
                    errors,
                    reason: failure.message,
                    died_at_ms: at,
                };
                settle(shared, &delivery, Settle::Dead(dead)).await;
                shared.tally.dead.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                shared.observe(&envelope.name, &delivery.queue, Observed::Dead, started);
            }
        }
    }
}

enum Settle {
    Ack,
    Retry(Envelope, Duration),
    Dead(DeadEvent),
}

/// Acks, retries or dead-letters; a broker error is retried a few times,
/// then logged: the event is not lost, it runs again once its lease lapses.
async fn settle(shared: &Shared, delivery: &Delivery, what: Settle) {
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=5 {
        let r = match &what {
            Settle::Ack => shared.broker.ack(delivery).await,
            Settle::Retry(next, delay) => shared.broker.retry(delivery, next, *delay).await,
            Settle::Dead(dead) => shared.broker.dead(delivery, dead).await,
        };
        match r {
            Ok(()) => return,
            Err(e) if attempt < 5 => {
                tracing::warn!(
                    "Broker error settling an event on {}: {e}; trying again",
                    delivery.queue
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => tracing::error!(
                "Broker error settling an event on {}: {e}; it will run again (at least once)",
                delivery.queue
            ),
        }
    }
}
