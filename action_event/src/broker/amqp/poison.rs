//! Poison events on quorum queues: an event whose poller dies each time it
//! runs it (an abort, a segfault, an OOM kill) never fails in a way the
//! poller can count, so without a bound it would be delivered forever.
//!
//! A quorum queue counts deliveries that ended without a settlement (the
//! consumer's channel or connection closed, or a `nack` with requeue) and
//! tells the count in the `x-delivery-count` header of the next delivery.
//! With `queue_type=quorum`, an event handed out with `x-delivery-count` ≥
//! the URL's `delivery_limit` (default
//! [`DEFAULT_DELIVERY_LIMIT`](super::DEFAULT_DELIVERY_LIMIT), `off` to turn
//! it off) is not run again: it is moved to the dead letters (confirmed,
//! then acked) with the reason `delivered N times without finishing: its
//! poller died each time ...`, where `dead list` shows it and `dead retry`
//! puts it back with a fresh count.
//!
//! The count is the broker's, not the handler's: a delivery also counts
//! when the event was only buffered by a poller that stopped or lost its
//! connection (a `release`, a broker restart, the death of a node), so keep
//! the limit well above the number of such interruptions one event may see
//! while it waits (the default, 20, is RabbitMQ 4.0's). The broker's own
//! `x-delivery-limit` is not set: past it RabbitMQ drops or dead-letters the
//! raw message itself, outside the dead letters this backend keeps (and on
//! 3.10 setting it also makes a requeue go to the head of the queue).
//! Classic queues count nothing: there the limit does not exist.

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use super::Inner;
use super::tag::Tag;
use crate::broker::DeadEvent;
use crate::envelope::{AttemptError, Envelope, now_ms};

/// The header in which quorum queues tell how many deliveries came before.
pub(super) const DELIVERY_COUNT: &str = "x-delivery-count";

/// `x-delivery-count` of a delivery (0 when absent: a first delivery).
pub(super) fn delivery_count(props: &BasicProperties) -> u64 {
    let Some(h) = props.headers().as_ref() else {
        return 0;
    };
    match h.inner().get(DELIVERY_COUNT) {
        Some(AMQPValue::LongLongInt(v)) => u64::try_from(*v).unwrap_or(0),
        Some(AMQPValue::LongInt(v)) => u64::try_from(*v).unwrap_or(0),
        Some(AMQPValue::LongUInt(v)) => u64::from(*v),
        Some(AMQPValue::ShortInt(v)) => u64::try_from(*v).unwrap_or(0),
        Some(AMQPValue::ShortUInt(v)) => u64::from(*v),
        Some(AMQPValue::ShortShortInt(v)) => u64::try_from(*v).unwrap_or(0),
        Some(AMQPValue::ShortShortUInt(v)) => u64::from(*v),
        _ => 0,
    }
}

/// The dead event for a message delivered `count` times without a
/// settlement (`limit`: the URL's `delivery_limit`).
pub(super) fn poison_dead(queue: &str, body: &[u8], count: u64, limit: u32) -> DeadEvent {
    let at = now_ms();
    let reason = format!(
        "delivered {count} times without finishing: its poller died each time it ran it \
         (an abort, a segfault, an OOM kill?) or stopped before settling it; not run again \
         (`delivery_limit={limit}` in the URL)"
    );
    let env = Envelope::from_slice(body).ok();
    let attempts = env.as_ref().map_or(1, |e| e.attempt);
    let mut errors = env.as_ref().map(|e| e.errors.clone()).unwrap_or_default();
    errors.push(AttemptError {
        attempt: attempts,
        at_ms: at,
        message: reason.clone(),
    });
    DeadEvent {
        id: env
            .as_ref()
            .map_or_else(|| crate::EventId::new().to_string(), |e| e.id.to_string()),
        name: env.as_ref().map(|e| e.name.clone()),
        queue: env
            .as_ref()
            .map_or_else(|| queue.to_string(), |e| e.queue.clone()),
        body: String::from_utf8_lossy(body).into_owned(),
        attempts,
        errors,
        reason,
        died_at_ms: at,
    }
}

impl Inner {
    /// Whether `tag`'s delivery is past the URL's `delivery_limit`; if so it
    /// is moved to the dead letters (or, when that fails, released: it
    /// comes back and is tried again) and must not be handed out.
    pub(super) async fn poisoned(&self, queue: &str, tag: &Tag, body: &[u8]) -> bool {
        let Some(limit) = self.opts.delivery_limit else {
            return false;
        };
        let count = delivery_count(&tag.properties);
        if count < u64::from(limit) {
            return false;
        }
        let dead = poison_dead(queue, body, count, limit);
        tracing::error!(
            "Event {} ({}) on {queue} {}; moved to the dead letters",
            dead.id,
            dead.name.as_deref().unwrap_or("?"),
            dead.reason
        );
        if let Err(e) = self.bury(tag, &dead).await {
            tracing::warn!(queue, error = %e, "cannot move a poison event to the dead letters; returning it");
            self.settle_nack(tag).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn count_from_the_header() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        let mut h = FieldTable::default();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        assert_eq!(
            delivery_count(&BasicProperties::default().with_headers(h)),
            3
        );
    }

    #[test]
    fn dead_event_names_the_event_and_the_limit() {
        let env = Envelope::new("crash", "high", serde_json::json!({"n": 1}));
        let d = poison_dead("high", &env.to_bytes(), 3, 3);
        assert_eq!(d.id, env.id.to_string());
        assert_eq!(d.name.as_deref(), Some("crash"));
        assert!(d.reason.contains("delivered 3 times"), "{}", d.reason);
        assert!(d.reason.contains("delivery_limit=3"), "{}", d.reason);
        assert_eq!(
            d.errors.last().map(|e| e.message.as_str()),
            Some(d.reason.as_str())
        );
        let raw = poison_dead("low", b"not json", 5, 5);
        assert_eq!((raw.queue.as_str(), raw.name), ("low", None));
    }
}
