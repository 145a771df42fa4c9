//! One event's task: dispatch it, [`decide`](super::decide::decide) what
//! becomes of it, and settle that with the broker (ack, retry, dead letter).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, watch};

#[cfg(feature = "metrics")]
use super::Observed;
use super::decide::{self, DeadWhy, Policy, Settle};
use super::run_loop::{Running, Shared};
use crate::Error;
use crate::broker::{DeadEvent, Delivery};
use crate::dispatch::Outcome;
use crate::envelope::{AttemptError, Envelope, now_ms};

/// A run's duration in the log: milliseconds with one decimal (`12.3ms`),
/// written with integer arithmetic (no `String`, no float formatting).
struct Ms(Duration);

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tenths of a millisecond, rounded half up.
        let tenths = (self.0.as_micros() + 50) / 100;
        write!(f, "{}.{}ms", tenths / 10, tenths % 10)
    }
}

/// An event id as text, formatted once (a `Uuid`'s `Display` went through
/// the formatter's padding each time: ~600 instructions, four times per event).
#[derive(Clone, Copy)]
pub(super) struct IdText([u8; 36]);

impl IdText {
    pub(super) fn new(id: &crate::EventId) -> IdText {
        let mut buf = [0u8; 36];
        id.0.hyphenated().encode_lower(&mut buf);
        IdText(buf)
    }

    pub(super) fn as_str(&self) -> &str {
        // `encode_lower` writes ASCII.
        std::str::from_utf8(&self.0).unwrap_or("?")
    }
}

impl std::fmt::Display for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event in the log: `queue:id`.
struct Tag<'a>(&'a str, IdText);

impl std::fmt::Display for Tag<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)?;
        f.write_str(":")?;
        f.write_str(self.1.as_str())
    }
}

/// Runs one delivery and settles it: an unreadable message is dead at
/// once; an event is dispatched (or given back on a hard stop), then acked,
/// retried or dead-lettered as [`decide`](decide::decide) says.
pub(super) async fn run_one(
    shared: &Shared,
    delivery: Delivery,
    envelope: Result<Envelope, Error>,
    mut hard: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    handler: Running,
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
            settle(shared, &delivery, Op::Dead(dead)).await;
            shared.tally.dead.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            shared.observe("?", &delivery.queue, Observed::Dead, Instant::now());
            return;
        }
    };
    let tag = Tag(&delivery.queue, IdText::new(&envelope.id));
    let started = Instant::now();
    // The task runs inside the event's span (see `event_span`), so
    // everything logged while it runs (its filters, its handler, a panic
    // through `log_panics`) carries the event.
    // Inside the poller's client scope, `queue!` in a handler goes to the
    // poller's broker, like `cx.queue`.
    let dispatch = shared
        .client
        .scope(shared.registry.dispatch(&envelope, shared.state.clone()));
    let outcome = tokio::select! {
        o = dispatch => o,
        _ = async { hard.wait_for(|v| *v).await.map(|_| ()) } => {
            match shared.broker.release(&delivery).await {
                Ok(()) => tracing::warn!("Gave back {tag} unfinished; it will run again"),
                Err(e) => tracing::error!("Could not give back {tag}: {e}; it runs again once its owner is seen gone or its lease lapses"),
            }
            shared.tally.released.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    drop(handler); // what follows settles a finished event
    let elapsed = Ms(started.elapsed());
    // A finished event frees its slot before its ack is on the wire: the
    // ack needs no handler, only a hop to the broker's I/O, and awaiting it
    // with the slot held would idle the slot (at concurrency 1, the whole
    // poller) for that hop. The task still ends after the ack, so a stop
    // waits for it. A retry or a dead letter keeps the slot until its
    // publish is confirmed, so failures do not pile up.
    if matches!(outcome, Outcome::Completed | Outcome::Halted { .. }) {
        drop(permit);
    }
    let policy = Policy {
        retries: shared.registry.get(&envelope.name).map(|e| e.retries),
        unknown_retries: shared.unknown_retries,
        backoff: shared.retry,
    };
    let what = decide::decide(&outcome, envelope.attempt, &policy);
    let failure = match outcome {
        Outcome::Completed => {
            settle(shared, &delivery, Op::Ack).await;
            shared.tally.completed.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            shared.observe(
                &envelope.name,
                &delivery.queue,
                Observed::Completed,
                started,
            );
            tracing::info!("Finished processing {tag} ({elapsed})");
            return;
        }
        Outcome::Halted { filter } => {
            settle(shared, &delivery, Op::Ack).await;
            shared.tally.halted.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            shared.observe(&envelope.name, &delivery.queue, Observed::Halted, started);
            tracing::info!("Halted {tag} by before_filter {filter} ({elapsed})");
            return;
        }
        Outcome::Failed(failure) => failure,
    };
    let at = now_ms();
    let mut errors = envelope.errors.clone();
    errors.push(AttemptError {
        attempt: envelope.attempt,
        at_ms: at,
        message: failure.message.clone(),
    });
    let attempts_total = policy.attempts();
    let why = match what {
        Settle::Retry { delay } => {
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
            settle(shared, &delivery, Op::Retry(next, delay)).await;
            shared.tally.retried.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            shared.observe(&envelope.name, &delivery.queue, Observed::Retried, started);
            return;
        }
        Settle::Dead(why) => why,
        // `decide` acks completed and halted runs only; were it to ack a
        // failure, the event would still not be dropped: it is dead.
        Settle::Ack => DeadWhy::NoRetriesLeft,
    };
    tracing::error!(
        "Failed processing {tag} (attempt {} of {attempts_total}, {elapsed}): {}; {}, moved to the dead letters",
        envelope.attempt,
        failure.message,
        why.as_str()
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
    settle(shared, &delivery, Op::Dead(dead)).await;
    shared.tally.dead.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    shared.observe(&envelope.name, &delivery.queue, Observed::Dead, started);
}

/// The broker work that settles an event.
enum Op {
    Ack,
    Retry(Envelope, Duration),
    Dead(DeadEvent),
}

/// Acks, retries or dead-letters; a broker error is retried a few times,
/// then logged: the event is not lost, it runs again once it is handed out again
/// (SQLite: its owner seen gone or its lease lapsed; RabbitMQ: the channel closed).
async fn settle(shared: &Shared, delivery: &Delivery, what: Op) {
    let mut wait = Duration::from_millis(50);
    for attempt in 1..=5 {
        let r = match &what {
            Op::Ack => shared.broker.ack(delivery).await,
            Op::Retry(next, delay) => shared.broker.retry(delivery, next, *delay).await,
            Op::Dead(dead) => shared.broker.dead(delivery, dead).await,
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
