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
//! - A tag counts as settled only once its own ack or nack was sent (or it
//!   is in the combined ack being sent): a later `multiple` never overtakes
//!   an individual frame of a tag it covers (one such frame after the
//!   `multiple` would be an unknown tag, and the broker would close the
//!   channel).
//! - Nothing is held back waiting for an earlier tag: an ack that cannot be
//!   combined now (an earlier event still runs) is sent on its own at once,
//!   as before. A delivery settled by a path that does not record here (a
//!   renewed event's old delivery, a buffered delivery returned) only stops
//!   combining on this channel: the floor stays below it.
//! - The combined frame's tag is one of the acks being sent (never acked
//!   before), as RabbitMQ requires.
//!
//! One channel, one [`AckBatch`]; a new consumer channel starts a new one.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::lock;

/// Past this many settled tags above a stuck floor, the channel stops
/// recording (a long event holds the floor; memory stays bounded).
const MAX_ABOVE: usize = 100_000;

/// What a task does with the ack it handed to [`AckBatch::gather`].
pub(super) enum Plan {
    /// Send it on its own (`multiple: false`), then [`AckBatch::sent`].
    Alone,
    /// Send it with `multiple: true`: it carries the acks of the earlier
    /// tags gathered with it; then tell each of these whether it went out.
    Combined(Vec<oneshot::Sender<bool>>),
    /// Another task's combined ack carries it: whether it went out.
    Carried(oneshot::Receiver<bool>),
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
    /// Stopped recording (see [`MAX_ABOVE`]).
    off: bool,
}

/// The acks of one consumer channel (see the module docs).
#[derive(Default)]
pub(crate) struct AckBatch {
    st: Mutex<State>,
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
    /// the gathering task's own ack.
    fn plan(&mut self) -> Plan {
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
        if run < 2 || self.off {
            return hand_out(ready.into_iter().map(|(_, w)| (w, Plan::Alone)));
        }
        for (t, _) in &ready[..run] {
            self.settle(*t);
        }
        let mut rest = ready.split_off(run);
        let (_, carrier) = ready.pop().unwrap_or((0, None));
        let mut told = Vec::with_capacity(ready.len());
        let mut plans = Vec::with_capacity(ready.len() + rest.len() + 1);
        for (_, w) in ready {
            let (tx, rx) = oneshot::channel();
            told.push(tx);
            plans.push((w, Plan::Carried(rx)));
        }
        plans.push((carrier, Plan::Combined(told)));
        plans.extend(rest.drain(..).map(|(_, w)| (w, Plan::Alone)));
        hand_out(plans.into_iter())
    }
}

/// Sends each waiting task its plan; returns the gathering task's own.
fn hand_out(plans: impl Iterator<Item = (Waiter, Plan)>) -> Plan {
    let mut mine = Plan::Alone;
    for (w, plan) in plans {
        match w {
            // A waiter that went away: its delivery is settled by the others.
            Some(tx) => drop(tx.send(plan)),
            None => mine = plan,
        }
    }
    mine
}

/// Plans what was gathered if the gathering task is dropped while it
/// yields (its waiters would wait forever otherwise).
struct Gathering<'a>(Option<&'a AckBatch>);

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            drop(lock(&b.st).plan());
        }
    }
}

impl AckBatch {
    /// Hands in the ack of `tag`. The first task of a scheduler turn
    /// gathers: it yields once, so that the acks due in the same turn join
    /// it, then plans them all (see [`Plan`]).
    pub(super) async fn gather(&self, tag: u64) -> Plan {
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
        guard.0 = None;
        lock(&self.st).plan()
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

    fn plan_of(st: &mut State, tags: &[u64]) -> Vec<(u64, &'static str)> {
        let mut rxs = Vec::new();
        for &t in tags {
            let (tx, rx) = oneshot::channel();
            st.ready.push((t, Some(tx)));
            rxs.push((t, rx));
        }
        let mine = st.plan();
        assert!(matches!(mine, Plan::Alone), "no own ack in these cases");
        rxs.into_iter()
            .map(|(t, mut rx)| {
                let what = match rx.try_recv().expect("planned") {
                    Plan::Alone => "alone",
                    Plan::Combined(_) => "combined",
                    Plan::Carried(_) => "carried",
                };
                (t, what)
            })
            .collect()
    }

    #[test]
    fn a_run_after_the_floor_is_combined_and_a_gap_is_never_covered() {
        let mut st = State::default();
        // 1..=3 due together: one frame, carried by 3.
        assert_eq!(
            plan_of(&mut st, &[2, 1, 3]),
            [(2, "carried"), (1, "carried"), (3, "combined")]
        );
        assert_eq!(st.floor, 3);
        // 4 still runs: 5 and 6 cannot be combined (a multiple would ack 4).
        assert_eq!(plan_of(&mut st, &[5, 6]), [(5, "alone"), (6, "alone")]);
        assert_eq!(st.floor, 3, "alone acks count once they went out");
        st.settle(5);
        st.settle(6);
        // 4 and 7 due: 5 and 6 are settled, so 4..=7 is one run.
        assert_eq!(plan_of(&mut st, &[7, 4]), [(7, "combined"), (4, "carried")]);
        assert_eq!(st.floor, 7);
        // A single ack is sent alone.
        assert_eq!(plan_of(&mut st, &[8]), [(8, "alone")]);
        st.settle(8);
        // 9 settled elsewhere without being recorded: 10 and 11 stay alone.
        assert_eq!(plan_of(&mut st, &[10, 11]), [(10, "alone"), (11, "alone")]);
    }
}
