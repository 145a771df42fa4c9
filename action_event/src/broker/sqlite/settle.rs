//! Settling a delivery: ack, retry, release.
//!
//! [`Broker::ack`], [`Broker::retry`], [`Broker::dead`] and
//! [`Broker::release`] only touch the row while it still carries the
//! delivery's claim token. Each of them also stops the heartbeat for that
//! delivery, *even when it fails*: a poller that cannot settle an event
//! retries a few times within the lease, then gives up, and the event must
//! then come back once its lease lapses instead of staying hidden for as
//! long as that poller lives. If the lease lapsed (the poller stalled longer than
//! `lease`) and another poller took the event, the row is left alone and a
//! warning says the event may run twice.
//!
//! [`Broker::ack`]: crate::broker::Broker::ack
//! [`Broker::retry`]: crate::broker::Broker::retry
//! [`Broker::dead`]: crate::broker::Broker::dead
//! [`Broker::release`]: crate::broker::Broker::release

use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::claim::Tag;
use super::conn::{Inner, Pending, State, each_in_one_tx};
use super::{SqliteBroker, dur_ms, now_i64, text};
use crate::Error;
use crate::broker::Delivery;
use crate::envelope::Envelope;

/// `?1` row id, `?2` claim token.
pub(super) const ACK: &str = "DELETE FROM events WHERE id = ?1 AND claim = ?2";

/// `?1` row id, `?2` claim token, `?3` body, `?4` visible_at.
pub(super) const RETRY: &str = "UPDATE events SET body = ?3, visible_at = ?4, claim = NULL, owner = NULL, deliveries = 0 \
     WHERE id = ?1 AND claim = ?2";

/// `?1` row id, `?2` claim token, `?3` now.
pub(super) const RELEASE: &str =
    "UPDATE events SET visible_at = ?3, claim = NULL, owner = NULL WHERE id = ?1 AND claim = ?2";

/// The event finished: its row goes. Acks that wait for the connection at
/// the same time are committed together, like publishes: at high
/// concurrency one write transaction settles many events. While the last
/// claim found events, an ack first waits up to `ack_linger` (URL option)
/// for the next claim's transaction to carry it. Either way it returns once its
/// delete committed.
pub(super) async fn ack(broker: &SqliteBroker, delivery: &Delivery) -> Result<(), Error> {
    let tag = broker.tag(delivery)?.clone();
    let linger = broker.inner.cfg.ack_linger;
    if !linger.is_zero() && broker.inner.claiming.load(Ordering::Relaxed) {
        broker
            .lingering_commit(pending_acks, tag, ack_rows, linger)
            .await
    } else {
        broker.group_commit(pending_acks, tag, ack_rows).await
    }
}

/// The row becomes the next attempt `next`, due after `delay`.
pub(super) async fn retry(
    broker: &SqliteBroker,
    delivery: &Delivery,
    next: &Envelope,
    delay: Duration,
) -> Result<(), Error> {
    let body = text(next.to_bytes());
    let visible_at = now_i64().saturating_add(dur_ms(delay));
    settle(
        broker,
        delivery,
        "retry",
        RETRY,
        vec![body.into(), visible_at.into()],
    )
    .await
}

/// The row is ready again now, untouched.
pub(super) async fn release(broker: &SqliteBroker, delivery: &Delivery) -> Result<(), Error> {
    settle(broker, delivery, "release", RELEASE, vec![now_i64().into()]).await
}

/// Runs one claim-checked statement for `delivery` and forgets it.
async fn settle(
    broker: &SqliteBroker,
    delivery: &Delivery,
    what: &'static str,
    sql: &'static str,
    extra: Vec<rusqlite::types::Value>,
) -> Result<(), Error> {
    let tag = broker.tag(delivery)?;
    let (row, claim, event_id) = (tag.row, tag.claim.clone(), tag.event_id.clone());
    broker
        .run(move |inner, state| {
            let mut args: Vec<rusqlite::types::Value> = vec![row.into(), claim.clone().into()];
            args.extend(extra.iter().cloned());
            let n = state
                .conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(args)));
            // Forgotten even when the statement failed: the heartbeat must
            // not keep an event whose poller may give up on it (module docs).
            state.held.remove(&(row, claim.clone()));
            let n = n.map_err(|e| inner.err(what, e))?;
            if n == 0 {
                warn_lapsed(&inner.url, &event_id, what);
            }
            Ok(())
        })
        .await
}

fn pending_acks(inner: &Inner) -> &std::sync::Mutex<Vec<Pending<Tag>>> {
    &inner.acks
}

/// Deletes the rows of acked deliveries in one transaction (an autocommit
/// delete for a single one). The deliveries are forgotten by the heartbeat
/// first, even if the delete then fails (module docs).
fn ack_rows(inner: &Inner, state: &mut State, acks: &[Tag]) -> Result<(), Error> {
    for a in acks {
        state.held.remove(&(a.row, a.claim.clone()));
    }
    each_in_one_tx(inner, state, "ack", acks, |conn, a| {
        delete_acked(inner, conn, a)
    })
}

/// Deletes an acked delivery's row if it still carries its claim token
/// (else warns: another poller took it after its lease lapsed).
pub(super) fn delete_acked(inner: &Inner, conn: &Connection, a: &Tag) -> Result<(), Error> {
    let n = conn
        .prepare_cached(ACK)
        .and_then(|mut s| s.execute(params![a.row, a.claim]))
        .map_err(|e| inner.err("ack", e))?;
    if n == 0 {
        warn_lapsed(&inner.url, &a.event_id, "ack");
    }
    Ok(())
}

pub(super) fn warn_lapsed(url: &str, event_id: &str, what: &str) {
    tracing::warn!(
        broker = %url,
        event_id = %event_id,
        "event {event_id}: its lease expired before {what} (the poller stalled longer than the lease) \
         and another poller took it: left alone, it may run twice"
    );
}
