//! Paused queues, as every backend's `take` honours them.
//!
//! The pause state lives in the broker (SQLite and PostgreSQL: the table
//! `paused_queues`; RabbitMQ: a marker queue per paused queue, see
//! `amqp::pause`), so it is
//! shared by every poller on every machine and survives restarts. Each
//! broker handle keeps a copy ([`PauseCache`]) that it refreshes at most
//! every [`FRESH`] (250 ms) from inside `take`: the check per event is a
//! look at that copy (a mutex and a clock read), never a broker round trip.
//!
//! [`take`] is the one loop every backend runs:
//! - the queues of the call that are paused are left out; the others are
//!   taken from in the order given (strict priority among them unchanged);
//! - one wait on the backend lasts at most [`FRESH`], so a pause is seen
//!   within 250 ms even by a `take` that waits long;
//! - a delivery whose queue turns out paused once it is in hand (the pause
//!   was seen while it was being taken) is released untouched, not started:
//!   no event starts after its queue's pause is seen (that look is at the
//!   copy: an event in hand never waits for a read of the broker);
//! - when a queue is seen paused, the backend gives back what it took from
//!   that queue ahead of time ([`Pausable::now_paused`]: SQLite's batch
//!   claim, RabbitMQ's prefetched deliveries), so they wait in the queue.
//!
//! Each change a handle sees is logged once (INFO): `Queue `low` is paused:
//! its events wait until it is resumed` / `Queue `low` resumed`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::Delivery;
use crate::Error;

/// How old the copy of the pause state may be before `take` looks again.
pub(crate) const FRESH: Duration = Duration::from_millis(250);

/// The error of a backend that cannot pause queues.
pub(crate) fn unsupported(url: &str, what: &str) -> Error {
    let scheme = url.split("://").next().unwrap_or("");
    Error::broker(
        url,
        format!(
            "the `{scheme}://` backend cannot {what}: pausing queues needs SQLite, RabbitMQ or PostgreSQL"
        ),
    )
}

/// Checks a queue name given to pause or resume: not empty, no whitespace.
pub(crate) fn check_name(url: &str, queue: &str) -> Result<(), Error> {
    if queue.is_empty() || queue.chars().any(char::is_whitespace) {
        return Err(Error::broker(
            url,
            format!("`{queue}` is not a queue name: give one name without spaces, e.g. `low`"),
        ));
    }
    Ok(())
}

/// A handle's copy of the pause state (module docs).
#[derive(Default)]
pub(crate) struct PauseCache {
    seen: Mutex<Seen>,
    /// Held by the task that refreshes; others use the copy meanwhile.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Seen {
    /// When the copy was loaded; `None`: never.
    at: Option<Instant>,
    /// The queues the copy speaks for; `None`: every queue.
    covers: Option<BTreeSet<String>>,
    paused: Arc<BTreeSet<String>>,
}

impl Seen {
    fn fresh_for(&self, queues: &[String]) -> bool {
        self.at.is_some_and(|at| at.elapsed() < FRESH)
            && self
                .covers
                .as_ref()
                .is_none_or(|c| queues.iter().all(|q| c.contains(q)))
    }
}

impl PauseCache {
    /// Records a pause or resume made through this handle, at once.
    pub(crate) fn note(&self, queue: &str, paused: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut set = (*seen.paused).clone();
        if paused {
            set.insert(queue.to_string());
        } else {
            set.remove(queue);
        }
        seen.paused = Arc::new(set);
    }

    /// The queues the copy names, paused or looked at (whatever its age).
    #[cfg(feature = "amqp")]
    pub(crate) fn known(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeSet<String> = seen.paused.iter().cloned().collect();
        out.extend(seen.covers.iter().flatten().cloned());
        out.into_iter().collect()
    }

    fn fresh(&self, queues: &[String]) -> Option<Arc<BTreeSet<String>>> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.fresh_for(queues).then(|| seen.paused.clone())
    }

    /// Whether the state was read from the broker at least once.
    fn loaded(&self) -> bool {
        self.copy_if_loaded().is_some()
    }

    /// The copy, whatever its age, once the state was read at least once
    /// (one lock: the check after every take).
    fn copy_if_loaded(&self) -> Option<Arc<BTreeSet<String>>> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.at.is_some().then(|| seen.paused.clone())
    }

    fn current(&self) -> Arc<BTreeSet<String>> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .paused
            .clone()
    }

    /// Stores a new copy; returns the queues of `queues` newly paused.
    fn store(
        &self,
        queues: &[String],
        covers: Option<BTreeSet<String>>,
        paused: BTreeSet<String>,
    ) -> Vec<String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let first = seen.at.is_none();
        let mut newly = Vec::new();
        for q in queues {
            let (was, is) = (seen.paused.contains(q), paused.contains(q));
            if is && (!was || first) {
                tracing::info!("Queue `{q}` is paused: its events wait until it is resumed");
                newly.push(q.clone());
            } else if was && !is {
                tracing::info!("Queue `{q}` resumed");
            }
        }
        seen.at = Some(Instant::now());
        seen.covers = covers;
        seen.paused = Arc::new(paused);
        newly
    }
}

/// What [`take`] needs from a backend.
#[async_trait]
pub(crate) trait Pausable: Send + Sync {
    fn pause_cache(&self) -> &PauseCache;

    /// The paused queues among `queues`, read from the broker, and the
    /// queues that answer speaks for (`None`: every queue).
    async fn load_paused(
        &self,
        queues: &[String],
    ) -> Result<(BTreeSet<String>, Option<BTreeSet<String>>), Error>;

    /// `queues` were just seen paused: give back what was taken from them ahead.
    async fn now_paused(&self, queues: &[String]);

    /// The backend's own `take`.
    async fn take_from(&self, queues: &[String], wait: Duration)
    -> Result<Option<Delivery>, Error>;

    /// Gives a delivery back untouched (`Broker::release`).
    async fn put_back(&self, delivery: &Delivery) -> Result<(), Error>;
}

/// How long one read of the pause state may take before the last answer
/// is kept ([`paused_now`]).
const LOAD_BOUND: Duration = Duration::from_secs(1);

/// The paused queues among `queues`, from the copy if it is fresh, else
/// from the broker (at most one task reads it at a time; a failed read
/// keeps the old copy for another [`FRESH`]).
pub(crate) async fn paused_now<B: Pausable + ?Sized>(
    b: &B,
    queues: &[String],
) -> Arc<BTreeSet<String>> {
    let cache = b.pause_cache();
    if let Some(p) = cache.fresh(queues) {
        return p;
    }
    let _g = match cache.refreshing.try_lock() {
        Ok(g) => g,
        // Before the first read nothing is known: wait for it rather than
        // take from a queue that may be paused (a poller's slots all start
        // at once; only one reads).
        Err(_) if !cache.loaded() => cache.refreshing.lock().await,
        Err(_) => return cache.current(),
    };
    if let Some(p) = cache.fresh(queues) {
        return p;
    }
    // Bounded: with the broker unreachable, a read would wait for a
    // connection as long as a publish may (30 s), holding up `take` and
    // with it a poller's stop; the last answer stands meanwhile.
    let loaded = tokio::time::timeout(LOAD_BOUND, b.load_paused(queues))
        .await
        .map_err(|_| format!("no answer within {LOAD_BOUND:?}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
    match loaded {
        Ok((paused, covers)) => {
            let newly = cache.store(queues, covers, paused);
            if !newly.is_empty() {
                b.now_paused(&newly).await;
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot read which queues are paused; keeping the last answer");
            let mut seen = cache.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.at = Some(Instant::now());
        }
    }
    cache.current()
}

/// `Broker::take` with paused queues left out (module docs).
pub(crate) async fn take<B: Pausable + ?Sized>(
    b: &B,
    queues: &[String],
    wait: Duration,
) -> Result<Option<Delivery>, Error> {
    let deadline = Instant::now() + wait;
    loop {
        let paused = paused_now(b, queues).await;
        let step = deadline
            .saturating_duration_since(Instant::now())
            .min(FRESH);
        let got = if paused.is_empty() {
            b.take_from(queues, step).await?
        } else {
            let active: Vec<String> = queues
                .iter()
                .filter(|q| !paused.contains(*q))
                .cloned()
                .collect();
            if active.is_empty() {
                tokio::time::sleep(step).await;
                None
            } else {
                b.take_from(&active, step).await?
            }
        };
        if let Some(delivery) = got {
            // The copy as it is now, not read again: with an event in hand,
            // a read of the broker's state would hold it up by that round
            // trip (measured on RabbitMQ: one event every `FRESH` started
            // 2.6-3.6 ms late, the p99 of the latency row). A pause seen
            // since this take began (by the read at the top of the loop, or
            // made through this handle) still keeps the event from starting.
            let paused = match b.pause_cache().copy_if_loaded() {
                Some(p) => p,
                None => paused_now(b, queues).await,
            };
            if !paused.contains(&delivery.queue) {
                return Ok(Some(delivery));
            }
            // Paused while it was being taken: it waits with the others.
            b.put_back(&delivery).await?;
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
    }
}
