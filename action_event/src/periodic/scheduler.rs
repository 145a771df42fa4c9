//! The scheduler every poller runs: for each periodic event of the binary,
//! wait for its next tick, then claim it through the broker
//! ([`Broker::tick_claim`]); the broker makes sure one claim wins.
//!
//! ```no_run
//! # async fn run() -> Result<(), action_event::Error> {
//! let broker = action_event::broker::connect("sqlite://action_event.db").await?;
//! let registry = action_event::registry()?;
//! let task = action_event::periodic::scheduler::spawn(broker, registry);
//! // ... later, when the poller stops:
//! task.stop().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::broker::Broker;
use crate::envelope::now_ms;
use crate::registry::{EventInfo, Registry};

use super::{Step, TickClaim, format_tick, plan};

/// How often the scheduler looks at the broker's state when nothing is due
/// (a poller that does not hold the RabbitMQ lease checks this often
/// whether it got it).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The running scheduler: [`SchedulerTask::stop`] lets a claim in progress
/// finish (so the broker's records stay in step with what was queued);
/// dropping it aborts at once.
#[derive(Debug)]
pub struct SchedulerTask(
    Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
);

impl SchedulerTask {
    /// Stops after the claim in progress, if any (waiting at most 5 s).
    pub async fn stop(mut self) {
        if let Some((stop, mut handle)) = self.0.take() {
            let _ = stop.send(true);
            if tokio::time::timeout(Duration::from_secs(5), &mut handle)
                .await
                .is_err()
            {
                handle.abort();
            }
        }
    }
}

impl Drop for SchedulerTask {
    fn drop(&mut self) {
        if let Some((_, h)) = self.0.take() {
            h.abort();
        }
    }
}

/// Starts the scheduler for the periodic events of `registry` on `broker`
/// (nothing when it has none). It runs until the returned handle is
/// dropped.
pub fn spawn(broker: Arc<dyn Broker>, registry: &'static Registry) -> SchedulerTask {
    let events: Vec<&'static EventInfo> =
        registry.events().filter(|e| e.periodic.is_some()).collect();
    if events.is_empty() {
        return SchedulerTask(None);
    }
    for e in &events {
        if let Some(p) = &e.periodic {
            tracing::info!(
                "Periodic event {} on queue {}: {}",
                e.name,
                e.queue,
                p.schedule
            );
        }
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    SchedulerTask(Some((stop, tokio::spawn(run(broker, events, stopped)))))
}

async fn run(
    broker: Arc<dyn Broker>,
    events: Vec<&'static EventInfo>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let started = ms_now();
    let mut holder = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let pause = match round(&*broker, &events, started, &mut holder).await {
            Ok(sleep) => {
                backoff = Duration::from_millis(100);
                sleep
            }
            Err(e) if e.to_string().contains("no periodic ticks") => {
                tracing::warn!("Periodic events are not queued by this poller: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!("Periodic ticks: {e}; trying again in {backoff:?}");
                let pause = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Queues every tick due now; returns how long to sleep.
async fn round(
    broker: &dyn Broker,
    events: &[&'static EventInfo],
    started: i64,
    was_holder: &mut Option<bool>,
) -> Result<Duration, Error> {
    let state = broker.tick_state().await?;
    // A backend without a lease (SQLite) says `holder` from the start:
    // only a change is news.
    if *was_holder != Some(state.holder) {
        if state.holder && was_holder.is_some() {
            tracing::info!("This poller now queues the periodic ticks (it holds the lease)");
        }
        *was_holder = Some(state.holder);
    }
    if !state.holder {
        return Ok(LOOK_EVERY);
    }
    let mut wake = ms_now() + i64::try_from(LOOK_EVERY.as_millis()).unwrap_or(250) * 4;
    for ev in events {
        let Some(periodic) = &ev.periodic else {
            continue;
        };
        let mut last = state.last.get(ev.name).copied();
        // A bounded number of steps per round, so one event far behind
        // does not starve the others.
        for _ in 0..64 {
            let now = ms_now();
            let step = plan(
                &periodic.schedule,
                periodic.missed,
                last.unwrap_or(started),
                now,
            );
            let (tick, envelope) = match step {
                Step::Done => break,
                Step::Wait(at) => {
                    wake = wake.min(at);
                    break;
                }
                Step::Queue { tick, missed_from } => {
                    if let Some(from) = missed_from {
                        tracing::warn!(
                            "Periodic event {}: ticks from {} to {} were missed (no poller ran); queued once for {} (missed = \"once\")",
                            ev.name,
                            format_tick(from),
                            format_tick(tick),
                            format_tick(tick)
                        );
                    }
                    (tick, Some(periodic.envelope(ev.name, ev.queue, tick)?))
                }
                Step::Skip { from, to } => {
                    tracing::warn!(
                        "Periodic event {}: ticks from {} to {} were missed (no poller ran); skipped (missed = \"skip\")",
                        ev.name,
                        format_tick(from),
                        format_tick(to)
                    );
                    (to, None)
                }
            };
            let queued = envelope.as_ref().map(|e| e.id);
            let claim = TickClaim {
                name: ev.name.to_string(),
                expected: last,
                tick,
                envelope,
            };
            if broker.tick_claim(&claim).await? {
                if let Some(id) = queued {
                    tracing::info!(
                        "Queued periodic {}:{} for {}",
                        ev.name,
                        id,
                        format_tick(tick)
                    );
                }
                last = Some(tick);
            } else {
                // Another poller claimed it (SQLite) or the lease moved
                // (RabbitMQ): look again.
                return Ok(Duration::ZERO);
            }
        }
    }
    let now = ms_now();
    Ok(
        Duration::from_millis(u64::try_from(wake.saturating_sub(now)).unwrap_or(0))
            .min(LOOK_EVERY * 4),
    )
}

fn ms_now() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}
