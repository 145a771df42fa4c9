//! The delay ladder.
//!
//! For each level `L` ms in use, a durable fanout exchange
//! and a durable queue both named `<prefix>delay.<L>`, the queue with
//! `x-message-ttl = L` and `x-dead-letter-exchange = ""` and *no*
//! dead-letter routing key. A delayed event is published to the exchange
//! with the routing key `<prefix><queue>`; when its TTL runs out the
//! default exchange routes it back to its work queue by that key. Every
//! message in one level queue has the same TTL, so no head-of-line
//! blocking: a 1 s delay queued after a 3 s one is not held back. A delay
//! is split into hops (largest level that fits, or a level at most
//! 100 ms / 5 % too long); an event that comes back before its
//! `run_at` (header `x-action-event-run-at`) is not handed out but sent
//! through the ladder again, as a *fresh* publish: the `x-death` headers
//! that make RabbitMQ 3.x silently drop a message that passes twice
//! through one queue are never carried over. Every message published to a
//! level also carries `expiration` = `L` (see
//! [`expiring_properties`](super::wire::expiring_properties): a new quorum
//! level's own TTL may come too late for the first messages).

use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::consume::Slot;
use super::tag::Tag;
use super::wire::{republish_properties, run_at_of};
use crate::envelope::now_ms;

/// The delay ladder's levels, in ms.
const LEVELS_MS: &[u64] = &[
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000, 120_000, 300_000, 600_000,
    1_200_000, 3_600_000, 7_200_000, 14_400_000, 43_200_000, 86_400_000,
];

/// An event this close to its `run_at` is held instead of re-delayed.
const SHORT_WAIT_MS: u64 = 50;

/// The delay level for `remaining` ms: one at most 100 ms / 5 % too long,
/// else the largest that is not too long.
pub(super) fn pick_level(remaining: u64) -> u64 {
    let tolerance = (remaining / 20).max(100);
    if let Some(&l) = LEVELS_MS
        .iter()
        .find(|&&l| l >= remaining && l - remaining <= tolerance)
    {
        return l;
    }
    LEVELS_MS
        .iter()
        .rev()
        .find(|&&l| l <= remaining)
        .copied()
        .unwrap_or(LEVELS_MS[0])
}

impl Inner {
    /// An event that came back before its `run_at` (the ladder's levels are
    /// coarse): sent through the ladder again and settled (`true`: not to be
    /// handed out), or, when it is due within `SHORT_WAIT_MS`, waited for.
    pub(super) async fn early(&self, slot: &Slot, tag: &Tag, data: &[u8]) -> bool {
        if let Some(run_at) = run_at_of(&tag.properties, data) {
            let now = now_ms();
            if run_at > now + SHORT_WAIT_MS {
                let props = republish_properties(&tag.properties, run_at);
                let deadline = Instant::now() + self.opts.publish_timeout;
                match self
                    .route(&slot.name, data, props, Some(run_at), deadline)
                    .await
                {
                    Ok(()) => self.settle_ack(tag).await,
                    Err(e) => {
                        tracing::warn!(queue = %slot.name, error = %e, "cannot delay an early event; returning it");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        self.settle_nack(tag).await;
                    }
                }
                return true;
            } else if run_at > now {
                tokio::time::sleep(Duration::from_millis(run_at - now)).await;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(pick_level(1_000), 1_000);
        assert_eq!(pick_level(995), 1_000);
        assert_eq!(pick_level(3_000), 2_000);
        assert_eq!(pick_level(10), 100);
        assert_eq!(pick_level(10 * 86_400_000), 86_400_000);
    }
}
