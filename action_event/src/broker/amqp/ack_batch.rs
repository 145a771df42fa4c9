//! Acks of one consumer channel combined into one `basic.ack` with
//! `multiple: true` where that stays exact.
//!
//! An ack frame per event cost the poller a lapin request (a promise, a
//! frame, tasks) and the broker a command per event. Acks that become due
//! together (the events of one scheduler turn) go out as one frame here,
//! but only when it acks nothing else: `multiple` acks *every* unacked
//! delivery of the channel up to its tag, so it is sent only for a run of
//! tags that starts right after the channel's **floor** (every tag at or
//! below it is settled) and holds only tags settled already or being acked
//! now. Delivery tags are the channel's own sequence (1, 2, 3, ... for every
//! delivery and `basic.get` on it), so "every tag below is settled" is
//! exact once each settle is recorded.
//!
//! - A tag counts as settled only once the frame that acked or nacked it
//!   went out (lapin resolved it): a later `multiple` never overtakes an
//!   individual frame of a tag it covers (one such frame after the
//!   `multiple` would name an unknown tag, and the broker would close the
//!   channel), and only one combined ack per channel is on its way at a
//!   time (lapin sends each from a task of its own, so two could go out in
//!   either order; measured: `unknown delivery tag` and redeliveries on a
//!   multi-thread runtime until this was so). Acks due meanwhile gather and
//!   go out together after it.
//! - No ack waits for an earlier event to finish: an ack that cannot be
//!   combined now (an earlier event still runs) is sent on its own at once,
//!   as before. A delivery settled by a path that does not record here (a
//!   renewed event's old delivery, a buffered delivery returned) only stops
//!   combining on this channel: the floor stays below it.
//! - The combined frame's tag is one of the acks being sent (never acked
//!   before), as RabbitMQ requires.
//!
//! One channel, one [`AckBatch`]; a new consumer channel starts a new one.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use super::lock;

/// Past this many settled tags above a stuck floor, the channel stops
/// recording (a long event holds the floor; memory stays bounded).
const MAX_ABOVE: usize = 100_000;

/// What a task does with the ack it handed to [`AckBatch::gather`].
pub(super) enum Plan {
    /// Send it on its own (`multiple: false`), then [`AckBatch::sent`].
    Alone,
    /// Send it with `multiple: true`: it carries the acks of the earlier
    /// tags gathered with it; then [`Combined::finish`].
    Combined(Combined),
    /// Another task's combined ack carries it: whether it went out.
    Carried(oneshot::Receiver<bool>),
}

/// A combined ack to send (see [`Plan::Combined`]). Until it is finished
/// (or dropped, which counts as not sent), no other combined ack of the
/// channel is planned: two `multiple` frames could reach the broker in
/// either order, and the lower one would then name a tag already acked.
pub(super) struct Combined {
    batch: Arc<AckBatch>,
    tags: Vec<u64>,
    carried: Vec<oneshot::Sender<bool>>,
    done: bool,
}

impl Combined {
    /// The frame went out (`ok`) or not: its tags are settled (only if it
    /// went out) and the deliveries it carried are told.
    pub(super) fn finish(mut self, ok: bool) {
        self.report(ok);
    }

    fn report(&mut self, ok: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        {
            let mut st = lock(&self.batch.st);
            if ok {
                for &t in &self.tags {
                    st.settle(t);
                }
            }
            st.in_flight = false;
        }
        self.batch.idle.notify_waiters();
        for tx in self.carried.drain(..) {
            let _ = tx.send(ok);
        }
    }
}

impl Drop for Combined {
    fn drop(&mut self) {
        self.report(false);
    }
}

type Waiter = Option<oneshot::Sender<Plan>>;

#[derive(Default)]
struct State {
    /// Every tag at or below is settled.
    floor: u64,
    /// Settled tags above `floor + 1`.
    above: BTreeSet<u64>,
    /// Acks due, not planned yet: their tag and where their plan goes
    /// (none: the gathering task's own).
    ready: Vec<(u64, Waiter)>,
    /// A task is gathering `ready` (see [`AckBatch::gather`]).
    gathering: bool,
    /// A combined ack is on its way (see [`Combined`]).
    in_flight: bool,
    /// Stopped recording (see [`MAX_ABOVE`]).
    off: bool,
}

/// The acks of one consumer channel (see the module docs).
#[derive(Default)]
pub(crate) struct AckBatch {
    st: Mutex<State>,
    /// Woken when a combined ack is finished.
    idle: Notify,
}

impl State {
    fn settle(&mut self, tag: u64) {
        if self.off || tag <= self.floor {
            return;
        }
        if tag == self.floor + 1 {
            self.floor = tag;
            while self.above.remove(&(self.floor + 1)) {
                self.floor += 1;
            }
        } else {
            self.above.insert(tag);
            if self.above.len() > MAX_ABOVE {
                self.off = true;
                self.above.clear();
            }
        }
    }

    /// Plans the gathered acks: the longest run of them that continues the
    /// floor (through tags settled before) becomes one combined ack, carried
    /// by its highest tag; the others are sent alone. Returns the plan of
    /// the gathering task's own ack. Not called while a combined ack is on
    /// its way.
    fn plan(&mut self, batch: &Arc<AckBatch>) -> Plan {
        self.gathering = false;
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable_by_key(|(t, _)| *t);
        let mut end = self.floor;
        let mut run = 0;
        for (t, _) in &ready {
            while self.above.contains(&(end + 1)) {
                end += 1;
            }
            if *t != end + 1 {
                break;
            }
            end = *t;
            run += 1;
        }
        if run < 2 || self.off || self.in_flight {
            return hand_out(ready.into_iter().map(|(_, w)| (w, Plan::Alone)));
        }
        self.in_flight = true;
        let rest = ready.split_off(run);
        let tags: Vec<u64> = ready.iter().map(|(t, _)| *t).collect();
        let (_, carrier) = ready.pop().unwrap_or((0, None));
        let mut carried = Vec::with_capacity(ready.len());
        let mut plans = Vec::with_capacity(ready.len() + rest.len() + 1);
        for (_, w) in ready {
            let (tx, rx) = oneshot::channel();
            carried.push(tx);
            plans.push((w, Plan::Carried(rx)));
        }
        let combined = Combined {
            batch: batch.clone(),
            tags,
            carried,
            done: false,
        };
        plans.push((carrier, Plan::Combined(combined)));
        plans.extend(rest.into_iter().map(|(_, w)| (w, Plan::Alone)));
        hand_out(plans.into_iter())
    }
}

/// Sends each waiting task its plan; returns the gathering task's own.
/// A plan whose task went away is dropped: a dropped [`Combined`] counts as
/// not sent, and tells the deliveries it carried.
fn hand_out(plans: impl Iterator<Item = (Waiter, Plan)>) -> Plan {
    let mut mine = Plan::Alone;
    for (w, plan) in plans {
        match w {
            Some(tx) => drop(tx.send(plan)),
            None => mine = plan,
        }
    }
    mine
}

/// If the gathering task is dropped before it planned, every gathered ack
/// is sent alone (its waiters would wait forever otherwise).
struct Gathering<'a>(Option<&'a AckBatch>);

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            let ready = {
                let mut st = lock(&b.st);
                st.gathering = false;
                std::mem::take(&mut st.ready)
            };
            drop(hand_out(ready.into_iter().map(|(_, w)| (w, Plan::Alone))));
        }
    }
}

impl AckBatch {
    /// Hands in the ack of `tag`. The first task of a scheduler turn
    /// gathers: it yields once, so that the acks due in the same turn join
    /// it, waits until no combined ack is on its way (acks due meanwhile
    /// join it too), then plans them all (see [`Plan`]).
    pub(super) async fn gather(self: &Arc<Self>, tag: u64) -> Plan {
        let rx = {
            let mut st = lock(&self.st);
            if st.off {
                return Plan::Alone;
            }
            if st.gathering {
                let (tx, rx) = oneshot::channel();
                st.ready.push((tag, Some(tx)));
                Some(rx)
            } else {
                st.gathering = true;
                st.ready.push((tag, None));
                None
            }
        };
        if let Some(rx) = rx {
            // A gatherer always answers (even when dropped, see `Gathering`).
            return rx.await.unwrap_or(Plan::Alone);
        }
        let mut guard = Gathering(Some(self));
        tokio::task::yield_now().await;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let mut st = lock(&self.st);
                if !st.in_flight {
                    guard.0 = None;
                    return st.plan(self);
                }
            }
            idle.await;
        }
    }

    /// An ack sent on its own went out: its tag is settled.
    pub(super) fn sent(&self, tag: u64) {
        lock(&self.st).settle(tag);
    }

    /// A nack went out: its tag is settled.
    pub(super) fn nacked(&self, tag: u64) {
        lock(&self.st).settle(tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans `tags` on `b`; a combined ack is finished as sent at once.
    fn plan_of(b: &Arc<AckBatch>, tags: &[u64]) -> Vec<(u64, &'static str)> {
        let mut rxs = Vec::new();
        for &t in tags {
            let (tx, rx) = oneshot::channel();
            lock(&b.st).ready.push((t, Some(tx)));
            rxs.push((t, rx));
        }
        let mine = lock(&b.st).plan(b);
        assert!(matches!(mine, Plan::Alone), "no own ack in these cases");
        let mut combined = None;
        let out = rxs
            .into_iter()
            .map(|(t, mut rx)| {
                let what = match rx.try_recv().expect("planned") {
                    Plan::Alone => "alone",
                    Plan::Combined(c) => {
                        combined = Some(c);
                        "combined"
                    }
                    Plan::Carried(_) => "carried",
                };
                (t, what)
            })
            .collect();
        if let Some(c) = combined {
            assert!(lock(&b.st).in_flight);
            c.finish(true);
        }
        out
    }

    fn floor(b: &AckBatch) -> u64 {
        lock(&b.st).floor
    }

    #[test]
    fn a_run_after_the_floor_is_combined_and_a_gap_is_never_covered() {
        let b = Arc::new(AckBatch::default());
        // 1..=3 due together: one frame, carried by 3.
        assert_eq!(
            plan_of(&b, &[2, 1, 3]),
            [(2, "carried"), (1, "carried"), (3, "combined")]
        );
        assert_eq!(floor(&b), 3);
        // 4 still runs: 5 and 6 cannot be combined (a multiple would ack 4).
        assert_eq!(plan_of(&b, &[5, 6]), [(5, "alone"), (6, "alone")]);
        assert_eq!(floor(&b), 3, "alone acks count once they went out");
        b.sent(5);
        b.sent(6);
        // 4 and 7 due: 5 and 6 are settled, so 4..=7 is one run.
        assert_eq!(plan_of(&b, &[7, 4]), [(7, "combined"), (4, "carried")]);
        assert_eq!(floor(&b), 7);
        // A single ack is sent alone.
        assert_eq!(plan_of(&b, &[8]), [(8, "alone")]);
        b.sent(8);
        // 9 settled elsewhere without being recorded: 10 and 11 stay alone.
        assert_eq!(plan_of(&b, &[10, 11]), [(10, "alone"), (11, "alone")]);
    }

    #[test]
    fn no_second_combined_ack_while_one_is_on_its_way_and_a_lost_one_settles_nothing() {
        let b = Arc::new(AckBatch::default());
        lock(&b.st).ready.extend([(1, None), (2, None)]);
        let Plan::Combined(first) = lock(&b.st).plan(&b) else {
            panic!("1 and 2 combine");
        };
        assert!(lock(&b.st).in_flight);
        // 3 and 4 due meanwhile: 1 and 2 count only once their frame went
        // out, so a multiple for 4 (which would cover them) is not planned.
        lock(&b.st).ready.extend([(3, None), (4, None)]);
        assert!(matches!(lock(&b.st).plan(&b), Plan::Alone));
        // Dropped unsent: 1 and 2 are not settled, so nothing combines past them.
        drop(first);
        assert_eq!(floor(&b), 0);
        assert!(!lock(&b.st).in_flight);
    }
}
