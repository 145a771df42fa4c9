//! Waiting for events: one look per broker, not one per waiting take.
//!
//! A poller at concurrency 8 has up to 8 takes waiting at once, and each
//! `take` is called again every 250 ms (the pause check of
//! `crate::broker::paused`). If each looked at the tables each time, 4 idle
//! pollers would send hundreds of queries a second. Instead a take that
//! finds nothing ready records it (`Waiter::found_nothing`): the queues
//! it looked at, the *epoch* it looked in, and when the earliest delayed
//! event of those queues is due. While that answer stands
//! (`Waiter::stands`), every other take of the broker waits on a
//! `Notify` without a query. The answer falls when
//! - the epoch moves (`Waiter::bump`): a `NOTIFY` with no payload came
//!   (an insert by any process, on commit; a release; events of a poller
//!   gone or held ahead given back), or this broker released or gave back
//!   events;
//! - the earliest delayed or retried event of those queues is due: known
//!   at the look, or told later by a `NOTIFY` whose payload is its time (a
//!   retry by any broker, `Waiter::due`); a lease that lapses is such a
//!   time too (the look sees claimed rows' `visible_at`);
//! - it is `poll` old (default 1 s): the safety net for leases that lapse
//!   (a stalled poller's events become ready without a notification).
//!
//! A bump wakes one waiting take; a take that then gets an event wakes the
//! next (`Waiter::pass_on`), so a burst is taken by every free slot and a
//! single event wakes a single take.
//!
//! The same answer lets an event held ahead ([`super::ahead`]) be handed
//! out without a read: "nothing ready in `high`", learnt by the claim that
//! took a batch of `medium` after finding `high` empty, stands until one of
//! the above happens. Strict priority is then as strict as a read before
//! each hand-out: a `high` event becomes ready only by an insert, a
//! release or a give-back (each notifies), or when its time comes (known,
//! or notified by the retry that set it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::now_i64;

/// The wake-ups and the last "nothing ready" of one broker (module docs).
#[derive(Default)]
pub(super) struct Waiter {
    epoch: AtomicU64,
    notify: Notify,
    nothing: Mutex<Option<Nothing>>,
}

/// A look that found nothing ready.
struct Nothing {
    epoch: u64,
    queues: Vec<String>,
    at: Instant,
    /// When the earliest not-yet-ready event of `queues` is due (ms).
    due_ms: Option<i64>,
}

impl Waiter {
    /// The current epoch: read it before a look, give it to
    /// [`Waiter::found_nothing`] after.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Something may be ready: the last answer falls; one take wakes.
    pub(super) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// As [`Waiter::bump`], waking every waiting take (a notification may
    /// have been missed).
    pub(super) fn bump_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Wakes one more take (a take got an event: more may be there).
    pub(super) fn pass_on(&self) {
        self.notify.notify_one();
    }

    /// A look at `queues` in `epoch` found nothing ready; `due_ms`: when
    /// the earliest delayed event of those queues is due.
    pub(super) fn found_nothing(&self, epoch: u64, queues: &[String], due_ms: Option<i64>) {
        *self.lock() = Some(Nothing {
            epoch,
            queues: queues.to_vec(),
            at: Instant::now(),
            due_ms,
        });
    }

    /// An event is due at `due_ms` (a retry, by any broker): the last
    /// answer stands no longer than that; one waiting take wakes to wait
    /// for that time instead.
    pub(super) fn due(&self, due_ms: i64) {
        if let Some(n) = self.lock().as_mut() {
            n.due_ms = Some(n.due_ms.map_or(due_ms, |d| d.min(due_ms)));
        }
        self.notify.notify_one();
    }

    /// How much longer the last "nothing ready" stands for `queues`, if it
    /// does: then a look would find nothing either.
    pub(super) fn stands(&self, queues: &[String], poll: Duration) -> Option<Duration> {
        let guard = self.lock();
        let n = guard.as_ref()?;
        if n.epoch != self.epoch() || !queues.iter().all(|q| n.queues.contains(q)) {
            return None;
        }
        let mut left = poll.checked_sub(n.at.elapsed())?;
        if let Some(due) = n.due_ms {
            let until = due.checked_sub(now_i64()).filter(|ms| *ms > 0)?;
            left = left.min(Duration::from_millis(u64::try_from(until).unwrap_or(0)));
        }
        (!left.is_zero()).then_some(left)
    }

    /// Waits for a wake-up, at most `up_to`.
    pub(super) async fn wait(&self, up_to: Duration) {
        let _ = tokio::time::timeout(up_to, self.notify.notified()).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Nothing>> {
        self.nothing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_ready_stands_until_a_bump_a_due_event_or_poll() {
        let q = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let poll = Duration::from_secs(5);
        let w = Waiter::default();
        assert!(w.stands(&q(&["high"]), poll).is_none(), "no look yet");
        w.found_nothing(w.epoch(), &q(&["high", "low"]), None);
        assert!(w.stands(&q(&["high"]), poll).is_some());
        assert!(w.stands(&q(&["high", "low"]), poll).is_some());
        assert!(
            w.stands(&q(&["other"]), poll).is_none(),
            "queue not looked at"
        );
        w.bump();
        assert!(w.stands(&q(&["high"]), poll).is_none(), "epoch moved");

        w.found_nothing(w.epoch(), &q(&["high"]), Some(now_i64() + 60_000));
        let left = w.stands(&q(&["high"]), poll).unwrap();
        assert!(left <= poll);
        w.due(now_i64() + 200);
        let left = w.stands(&q(&["high"]), poll).unwrap();
        assert!(left <= Duration::from_millis(200), "{left:?}");
        w.due(now_i64() - 1);
        assert!(w.stands(&q(&["high"]), poll).is_none(), "an event is due");

        w.found_nothing(w.epoch(), &q(&["high"]), None);
        assert!(
            w.stands(&q(&["high"]), Duration::ZERO).is_none(),
            "poll over"
        );
    }
}
