//! The poller loop: takes events in strict priority order while a slot is
//! free, runs each as a task ([`run_one`](super::run_one)), and stops as
//! [`shutdown`](super::shutdown) says.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::run_one::{IdText, run_one};
use super::shutdown::{ExitReason, Shutdown, finish_in_hand, watch_pid_file};
#[cfg(feature = "metrics")]
use super::{Metrics, Observed};
use super::{PollerConfig, PollerInfo, RetryPolicy, pidfile};
use crate::broker::{Broker, Delivery, InFlight, PollerReport, Presence};
use crate::client::Client;
use crate::envelope::{Envelope, now_ms};
use crate::registry::Registry;
use crate::{Error, State};

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
pub(super) struct Tally {
    pub(super) completed: AtomicU64,
    pub(super) halted: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead: AtomicU64,
    pub(super) released: AtomicU64,
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

pub(super) struct Shared {
    pub(super) broker: Arc<dyn Broker>,
    pub(super) registry: &'static Registry,
    pub(super) state: Arc<State>,
    pub(super) client: Client,
    pub(super) retry: RetryPolicy,
    pub(super) unknown_retries: u32,
    pub(super) tally: Arc<Tally>,
    #[cfg(feature = "metrics")]
    pub(super) metrics: Arc<Metrics>,
    in_flight: InFlightMap,
    /// Handlers running now: events whose dispatch has not returned (a
    /// finished event still settling with the broker is not counted).
    handlers: Arc<AtomicUsize>,
}

/// Counts one handler as running until it drops: when its dispatch
/// returns, or its task ends (a panic, an abort).
pub(super) struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(count: &Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::Relaxed);
        Running(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
pub(super) struct PollerPresence {
    info: PollerInfo,
    in_flight: InFlightMap,
    tally: Arc<Tally>,
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
            counts: self.tally.counts(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl Tally {
    /// The counts a [`PollerReport`] carries (the dashboard's chart).
    fn counts(&self) -> crate::broker::PollerCounts {
        let completed = self.completed.load(Ordering::Relaxed);
        let halted = self.halted.load(Ordering::Relaxed);
        let retried = self.retried.load(Ordering::Relaxed);
        let dead = self.dead.load(Ordering::Relaxed);
        crate::broker::PollerCounts {
            processed: completed + halted + retried + dead,
            failed: retried + dead,
            retried,
            dead,
        }
    }
}

#[cfg(feature = "metrics")]
impl Shared {
    /// Counts one settled run for the metrics (see [`Metrics`]).
    pub(super) fn observe(
        &self,
        event: &str,
        queue: &str,
        what: Observed,
        started: std::time::Instant,
    ) {
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
                tally: Arc::default(),
                #[cfg(feature = "metrics")]
                metrics: Arc::new(Metrics::new()),
                in_flight: InFlightMap::default(),
                handlers: Arc::default(),
            }),
            config: PollerConfig {
                concurrency: config.concurrency.max(1),
                ..config
            },
        })
    }

    /// The metrics this poller keeps as it runs; serve them with
    /// [`MetricsEndpoint`](super::MetricsEndpoint) (the CLI's `--metrics ADDR` does).
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
        // The table is built only when a DEBUG line would show it.
        if tracing::enabled!(tracing::Level::DEBUG) {
            for line in shared.registry.describe().lines() {
                tracing::debug!("event {line}");
            }
        }
        let slots = Arc::new(Semaphore::new(config.concurrency));
        let (hard_tx, hard_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut stop_rx = shutdown.subscribe();
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
            tally: shared.tally.clone(),
        });
        // Beside the PID file: what the dashboard shows of this poller on a
        // backend without status requests (SQLite).
        let _report_file = config
            .pid_file
            .as_ref()
            .map(|p| super::report_file::spawn(p, presence.clone()));
        if let Err(e) = shared.broker.announce(presence).await {
            tracing::warn!("This poller may not show in `poller status` of other machines: {e}");
        }
        // Every poller queues the ticks of periodic events, whatever queues
        // it serves (the broker decides which poller queues each tick);
        // stopped when the loop returns.
        let scheduler = crate::periodic::scheduler::spawn(shared.broker.clone(), shared.registry);

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
                    let id = envelope.as_ref().ok().map(|e| IdText::new(&e.id));
                    let span = event_span(&delivery, envelope.as_ref().ok(), id.as_ref());
                    if let (Ok(env), Some(id)) = (&envelope, &id) {
                        span.in_scope(|| {
                            // `params` formats straight into the line: no String of its own.
                            tracing::info!("Processing {}:{} ({})", delivery.queue, id, env.params)
                        });
                    }
                    let running = shared.in_flight.enter(InFlight {
                        id: id.map_or("?".into(), |id| id.as_str().to_string()),
                        name: envelope.as_ref().map_or("?".into(), |e| e.name.clone()),
                        queue: delivery.queue.clone(),
                        started_at_ms: now_ms(),
                    });
                    let handler = Running::enter(&shared.handlers);
                    let shared = shared.clone();
                    let hard = hard_rx.clone();
                    // Boxed: the event's future is large, and a task moves
                    // what it is given into its cell; a box moves as a pointer.
                    tasks.spawn(
                        Box::pin(async move {
                            run_one(&shared, delivery, envelope, hard, permit, handler).await;
                            drop(running);
                        })
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
                "Events taken ahead were not given back (they come back by themselves: SQLite once this process is gone, or when their lease lapses): {e}"
            );
        }
        if exit == ExitReason::Empty {
            log_empty(&*shared.broker, shared.registry, &config.queues).await;
        }
        // No tick queued by a poller on its way out (a claim in progress
        // finishes first).
        scheduler.stop().await;
        finish_in_hand(
            &mut tasks,
            &exit,
            &shared.handlers,
            config.shutdown_timeout,
            &mut stop_rx,
            &hard_tx,
        )
        .await;
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

/// Says why an `exit_when_empty` poller exits: every queue is empty, or
/// (a WARN) the queues it serves are, while events wait on queues it does
/// not serve, which it names with their counts.
async fn log_empty(broker: &dyn Broker, registry: &Registry, served: &[String]) {
    let paused = paused_with_events(broker, served).await;
    if !paused.is_empty() {
        let total: u64 = paused.iter().map(|(_, n)| n).sum();
        let counts: Vec<String> = paused.iter().map(|(q, n)| format!("{q} ({n})")).collect();
        let names: Vec<&str> = paused.iter().map(|(q, _)| q.as_str()).collect();
        tracing::warn!(
            "The queues this poller serves have nothing ready to run; exiting, but {total} event(s) wait in paused queues: {}. They run once resumed: poller resume {}",
            counts.join(", "),
            names.join(" ")
        );
    }
    let (unserved, listed_all) = unserved_with_events(broker, registry, served).await;
    if unserved.is_empty() && listed_all {
        if paused.is_empty() {
            tracing::info!("All queues are empty; exiting");
        }
        return;
    }
    if unserved.is_empty() {
        // RabbitMQ cannot list queues: claim only what was counted.
        tracing::info!(
            "The queues this poller serves ({}) and those its events name are empty; exiting (this broker cannot list other queues: events queued to a queue no event names wait for a poller whose --queues names it)",
            served.join(",")
        );
        return;
    }
    let total: u64 = unserved.iter().map(|(_, n)| n).sum();
    let counts: Vec<String> = unserved.iter().map(|(q, n)| format!("{q} ({n})")).collect();
    let mut order: Vec<&str> = served.iter().map(String::as_str).collect();
    order.extend(unserved.iter().map(|(q, _)| q.as_str()));
    tracing::warn!(
        "The queues this poller serves ({}) are empty; exiting, but {total} event(s) wait on queues it does not serve: {}. A poller whose queues name them serves them, e.g. --queues \"{}\"",
        served.join(","),
        counts.join(", "),
        order.join(" ")
    );
}

/// The queues this poller does not serve that hold events (ready or
/// scheduled), with their counts: the queues this binary's events name,
/// and those the broker lists
/// ([`Broker::queues_with_events`]: SQLite knows every queue that has rows).
/// The flag says whether the broker listed every queue (RabbitMQ cannot).
async fn unserved_with_events(
    broker: &dyn Broker,
    registry: &Registry,
    served: &[String],
) -> (Vec<(String, u64)>, bool) {
    // Not `high medium low` as such: counting a queue may create it
    // (RabbitMQ declares it), and one no event names holds events only if
    // the broker lists it.
    let mut queues: std::collections::BTreeSet<String> =
        registry.events().map(|e| e.queue.to_string()).collect();
    let listed_all = match broker.queues_with_events().await {
        Ok(Some(listed)) => {
            queues.extend(listed);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!("Cannot list the queues that hold events: {e}");
            false
        }
    };
    let mut out = Vec::new();
    for q in queues.into_iter().filter(|q| !served.contains(q)) {
        match broker.depth(&q).await {
            Ok(d) => {
                let n = d.waiting + d.scheduled.unwrap_or(0);
                if n > 0 {
                    out.push((q, n));
                }
            }
            Err(e) => tracing::warn!("Cannot count the events of queue `{q}`: {e}"),
        }
    }
    (out, listed_all)
}

/// The paused queues among `served` (none when the broker cannot pause).
async fn paused_of(broker: &dyn Broker, served: &[String]) -> Vec<String> {
    broker.paused_among(served).await.unwrap_or_else(|e| {
        tracing::debug!("cannot tell which queues are paused: {e}");
        Vec::new()
    })
}

/// The paused queues among `served` that hold events, with their counts.
async fn paused_with_events(broker: &dyn Broker, served: &[String]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for q in paused_of(broker, served).await {
        match broker.depth(&q).await {
            Ok(d) => {
                let n = d.waiting + d.scheduled.unwrap_or(0);
                if n > 0 {
                    out.push((q, n));
                }
            }
            Err(e) => tracing::warn!("Cannot count the events of queue `{q}`: {e}"),
        }
    }
    out
}

/// Whether the broker counts no ready event in any of `queues` that is not
/// paused (for `exit_when_empty`: events of a paused queue wait for its
/// resume, not for this poller). A broker that cannot say is taken as "not
/// empty".
async fn nothing_ready(broker: &dyn Broker, queues: &[String]) -> bool {
    let paused = paused_of(broker, queues).await;
    for q in queues.iter().filter(|q| !paused.contains(q)) {
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

/// The span every event runs in: its name, id, queue and attempt. The JSON
/// log carries these fields on every line logged while the event runs.
fn event_span(
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    id: Option<&IdText>,
) -> tracing::Span {
    match (envelope, id) {
        (Some(env), Some(id)) => tracing::info_span!(
            "event",
            event = %env.name,
            id = %id,
            queue = %delivery.queue,
            attempt = env.attempt,
        ),
        _ => tracing::info_span!(
            "event",
            event = "?",
            id = "?",
            queue = %delivery.queue,
            attempt = 0u32,
        ),
    }
}
