//! The heartbeat: keeps the leases of the deliveries this broker holds,
//! and gives back events claimed ahead that waited too long.
//!
//! A heartbeat task of the broker extends the lease of every delivery it
//! holds every `lease / 3`, so a live poller keeps an event as long as its
//! handler runs. It stops when the broker is dropped; the leases of what it
//! still held then lapse and other pollers get those events again.

use std::sync::Weak;
use std::time::{Duration, Instant};

use rusqlite::{TransactionBehavior, params};

use super::ahead::{AHEAD_MAX, Ahead, unclaim_ahead};
use super::conn::{Inner, State};
use super::{dur_ms, now_i64, owner};
use crate::Error;

/// `?1` row id, `?2` claim token, `?3` new visible_at.
pub(super) const EXTEND: &str = "UPDATE events SET visible_at = ?3 WHERE id = ?1 AND claim = ?2";

impl Inner {
    pub(super) fn lease_ms(&self) -> i64 {
        dur_ms(self.cfg.lease)
    }

    /// Pushes back the lease of every delivery this broker holds.
    fn extend_leases(&self, state: &mut State) -> Result<(), Error> {
        if state.held.is_empty() {
            return Ok(());
        }
        let until = now_i64().saturating_add(self.lease_ms());
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err("heartbeat: begin", e))?;
        let mut lost = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(EXTEND)
                .map_err(|e| self.err("heartbeat", e))?;
            for (row, claim) in state.held.keys() {
                let n = stmt
                    .execute(params![row, claim, until])
                    .map_err(|e| self.err("heartbeat", e))?;
                if n == 0 {
                    lost.push((*row, claim.clone()));
                }
            }
        }
        tx.commit().map_err(|e| self.err("heartbeat: commit", e))?;
        for key in lost {
            if let Some(event_id) = state.held.remove(&key) {
                tracing::warn!(
                    broker = %self.url,
                    event_id = %event_id,
                    "event {event_id}: its lease expired before the heartbeat renewed it \
                     (poller stalled longer than the lease?); another poller may have taken it, \
                     so it may run twice"
                );
            }
        }
        Ok(())
    }
}

/// How often a broker that takes events looks for owners that are gone
/// ([`super::owner`]): their events are back within this plus a claim.
pub(super) const OWNER_CHECK: Duration = Duration::from_millis(250);

/// Extends the leases of held deliveries every `every`, gives back the
/// events claimed ahead that waited more than [`AHEAD_MAX`], and, once the
/// broker takes events, makes ready the events of owners that are gone
/// (both looked for every [`OWNER_CHECK`]).
pub(super) async fn heartbeat(inner: Weak<Inner>, every: Duration) {
    let step = every.min(OWNER_CHECK);
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut extended = Instant::now();
    let mut checked = Instant::now();
    let stale = |a: &Ahead| a.since.elapsed() > AHEAD_MAX;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let extend = extended.elapsed() + step / 2 >= every;
        let (any_stale, taking) = {
            let state = inner.state.lock().await;
            (state.ahead.iter().any(stale), state.taking)
        };
        let owners = taking && checked.elapsed() + step / 2 >= OWNER_CHECK;
        if !extend && !any_stale && !owners {
            continue;
        }
        if extend {
            extended = Instant::now();
        }
        if owners {
            checked = Instant::now();
        }
        let url = inner.url.clone();
        let work = move || {
            let mut state = inner.state.blocking_lock();
            let beat = inner.waiting(&mut state, |state| {
                let back = unclaim_ahead(&inner, state, stale)?;
                if back > 0 {
                    tracing::debug!(broker = %inner.url, "gave back {back} event(s) claimed ahead and not started within {AHEAD_MAX:?}");
                }
                if extend {
                    inner.extend_leases(state)?;
                }
                Ok(())
            });
            if owners
                && let Err(e) = inner.waiting(&mut state, |state| {
                    owner::reclaim_gone(&mut state.conn, now_i64(), &inner.url, &inner.cfg.path)
                })
            {
                tracing::warn!(broker = %inner.url, "{e}");
            }
            beat
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(broker = %url, "lease heartbeat failed: {e}"),
            Err(e) => tracing::warn!(broker = %url, "lease heartbeat task failed: {e}"),
        }
    }
}
