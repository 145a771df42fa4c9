//! Settling a delivery: ack, retry, release.
//!
//! Retry and release notify every broker (the channel of the insert
//! trigger, see [`super::wait`]): a retried event is due at a time the
//! payload gives, a released one is ready now, so idle takes and events
//! held ahead see them without a look of their own.
//!
//! Each statement touches the row only while it still carries the
//! delivery's claim token, and stops the heartbeat for that delivery even
//! when it fails (as SQLite does: a poller that cannot settle an event must
//! not keep it hidden for as long as it lives). If the lease lapsed and
//! another poller took the event, the row is left alone and a warning says
//! the event may run twice.

use std::time::Duration;

use super::claim::Tag;
use super::{Inner, dur_ms, now_i64, text};
use crate::Error;
use crate::envelope::Envelope;

/// The event finished: its row goes.
pub(super) async fn ack(inner: &Inner, tag: &Tag) -> Result<(), Error> {
    inner.held().remove(&tag.row);
    let n = sqlx::query(&inner.sql.ack)
        .bind(tag.row)
        .bind(tag.claim)
        .execute(&inner.pool)
        .await
        .map_err(|e| inner.err("ack", e))?
        .rows_affected();
    if n == 0 {
        warn_lapsed(&inner.url, &tag.event_id, "ack");
    }
    Ok(())
}

/// The row becomes the next attempt `next`, due after `delay`.
pub(super) async fn retry(
    inner: &Inner,
    tag: &Tag,
    next: &Envelope,
    delay: Duration,
) -> Result<(), Error> {
    inner.held().remove(&tag.row);
    let n = sqlx::query(&inner.sql.retry)
        .bind(tag.row)
        .bind(tag.claim)
        .bind(text(next.to_bytes()))
        .bind(now_i64().saturating_add(dur_ms(delay)))
        .fetch_all(&inner.pool)
        .await
        .map_err(|e| inner.err("retry", e))?
        .len();
    if n == 0 {
        warn_lapsed(&inner.url, &tag.event_id, "retry");
    } else {
        // This broker's idle takes look again when it is due.
        inner.waiter.due(now_i64().saturating_add(dur_ms(delay)));
    }
    Ok(())
}

/// The row is ready again now, untouched.
pub(super) async fn release(inner: &Inner, tag: &Tag) -> Result<(), Error> {
    inner.held().remove(&tag.row);
    let n = sqlx::query(&inner.sql.release)
        .bind(tag.row)
        .bind(tag.claim)
        .bind(now_i64())
        .fetch_all(&inner.pool)
        .await
        .map_err(|e| inner.err("release", e))?
        .len();
    if n == 0 {
        warn_lapsed(&inner.url, &tag.event_id, "release");
    } else {
        inner.waiter.bump();
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
