//! The generic poller: takes events from the broker in strict priority
//! order, runs them through the registry, and settles each one (ack, retry
//! with backoff, or dead letter).
//!
//! Most apps use [`main`] from their own `src/bin/poller.rs` (the binary
//! must link the app's events); [`Poller`] is the same loop as a library.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::broker::{Broker, DeadEvent, Delivery};
use crate::client::Client;
use crate::envelope::{AttemptError, Envelope, now_ms};
use crate::registry::{DEFAULT_RETRIES, FailureKind, Outcome, Registry};
use crate::{Error, State};

mod cli;
mod pidfile;

pub use cli::{main, main_with_args};
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
    /// Events run at once.
    pub concurrency: usize,
    /// Exit once every queue is empty and nothing is in hand.
    pub exit_when_empty: bool,
    /// On a stop, how long events in hand may take before they are given back.
    pub shutdown_timeout: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// How long one `take` waits when nothing is ready.
    pub idle_wait: Duration,
    /// The PID file this poller owns: when it stops naming this process the
    /// poller finishes what it has in hand and exits.
    pub pid_file: Option<PathBuf>,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            queues: DEFAULT_QUEUES.iter().map(|q| q.to_string()).collect(),
            concurrency: 1,
            exit_when_empty: false,
            shutdown_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            idle_wait: Duration::from_millis(500),
            pid_file: None,
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
    tally: Tally,
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
                tally: Tally::default(),
            }),
            config: PollerConfig {
                concurrency: config.concurrency.max(1),
                ..config
            },
        })
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
                    // Decoded and logged here, in take order: the log shows
                    // the order events start in, whatever the task scheduler does.
                    let envelope = Envelope::from_slice(&delivery.body);
                    if let Ok(env) = &envelope {
                        tracing::info!(
                            "Processing {}:{} ({})",
                            delivery.queue,
                            env.id,
                            env.params_json()
                        );
                    }
                    let shared = shared.clone();
                    let hard = hard_rx.clone();
                    tasks.spawn(async move {
                        run_one(&shared, delivery, envelope, hard).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    if config.exit_when_empty
                        && slots.available_permits() == config.concurrency
                        && tasks.is_empty()
                    {
                        break ExitReason::Empty;
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

fn fmt_ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

async fn run_one(
    shared: &Shared,
    delivery: Delivery,
    envelope: Result<Envelope, Error>,
    mut hard: watch::Receiver<bool>,
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
            return;
        }
    };
    let tag = format!("{}:{}", delivery.queue, envelope.id);
    let started = Instant::now();
    let outcome = tokio::select! {
        o = shared.registry.dispatch(&envelope, shared.state.clone(), Some(shared.client.clone())) => o,
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
    match outcome {
        Outcome::Completed => {
            settle(shared, &delivery, Settle::Ack).await;
            shared.tally.completed.fetch_add(1, Ordering::Relaxed);
            tracing::info!("Finished processing {tag} ({elapsed})");
        }
        Outcome::Halted { filter } => {
            settle(shared, &delivery, Settle::Ack).await;
            shared.tally.halted.fetch_add(1, Ordering::Relaxed);
            tracing::info!("Halted {tag} by before_filter {filter} ({elapsed})");
        }
        Outcome::Failed(failure) => {
            let retries = shared
                .registry
                .get(&envelope.name)
                .map(|e| e.retries)
                .unwrap_or(DEFAULT_RETRIES);
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
