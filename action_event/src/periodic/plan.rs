//! What the scheduler does next for one periodic event, from the last tick
//! queued and the time: a pure function, so the missed-tick policy is
//! tested without clocks or brokers.
//!
//! A tick is *due* once its time has come. A due tick is *late* while it is
//! at most [`MISSED_AFTER`] old and *missed* after that (every poller was
//! down, or none could reach the broker). Late ticks are all queued, one
//! event each, oldest first. Missed ticks follow the event's [`Missed`]
//! policy: [`Missed::Once`] (the default) queues ONE event for all of them,
//! carrying the time of the latest missed tick, then the schedule resumes;
//! [`Missed::Skip`] queues none and the schedule resumes at the next tick.

use super::schedule::Schedule;

/// How old a due tick may get before it counts as missed: 5 seconds.
///
/// ```
/// assert_eq!(action_event::periodic::MISSED_AFTER.as_secs(), 5);
/// ```
pub const MISSED_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// What happens to ticks that every poller missed (see the module docs).
///
/// ```
/// use action_event::periodic::Missed;
/// assert_eq!(Missed::default(), Missed::Once);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Missed {
    /// Queue one event for all the missed ticks (`missed = "once"`).
    #[default]
    Once,
    /// Queue none (`missed = "skip"`).
    Skip,
}

/// The next step for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due before this tick.
    Wait(i64),
    /// Queue the event for `tick`; it becomes the last tick queued. With
    /// `missed_from`, the event stands for every missed tick from
    /// `missed_from` to `tick`.
    Queue {
        /// The tick queued.
        tick: i64,
        /// The first missed tick it stands for, if any.
        missed_from: Option<i64>,
    },
    /// Queue nothing: the missed ticks from `from` to `to` are skipped; `to`
    /// becomes the last tick.
    Skip {
        /// The first tick skipped.
        from: i64,
        /// The last tick skipped.
        to: i64,
    },
    /// The schedule has no more ticks.
    Done,
}

/// The step after `last` (the last tick queued, or the time the scheduler
/// started when no tick was ever queued) at time `now`.
///
/// ```
/// use action_event::periodic::{Missed, Schedule, Step, plan};
/// let s = Schedule::every_ms(1000).unwrap();
/// assert_eq!(plan(&s, Missed::Once, 10_000, 10_500), Step::Wait(11_000));
/// assert_eq!(plan(&s, Missed::Once, 10_000, 11_200), Step::Queue { tick: 11_000, missed_from: None });
/// // down for a minute: one event for the ticks older than 5 s, then the late ones
/// assert_eq!(plan(&s, Missed::Once, 10_000, 70_000), Step::Queue { tick: 65_000, missed_from: Some(11_000) });
/// assert_eq!(plan(&s, Missed::Skip, 10_000, 70_000), Step::Skip { from: 11_000, to: 65_000 });
/// ```
pub fn plan(schedule: &Schedule, missed: Missed, last: i64, now: i64) -> Step {
    let Some(due) = schedule.next_after(last) else {
        return Step::Done;
    };
    if due > now {
        return Step::Wait(due);
    }
    let grace = i64::try_from(MISSED_AFTER.as_millis()).unwrap_or(i64::MAX);
    let missed_until = now.saturating_sub(grace);
    if due >= missed_until {
        return Step::Queue {
            tick: due,
            missed_from: None,
        };
    }
    let latest = schedule
        .latest_at_or_before(missed_until)
        .filter(|l| *l >= due)
        .unwrap_or(due);
    match missed {
        Missed::Once => Step::Queue {
            tick: latest,
            missed_from: Some(due),
        },
        Missed::Skip => Step::Skip {
            from: due,
            to: latest,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_ticks_are_queued_one_by_one() {
        let s = Schedule::every_ms(1000).unwrap();
        // 4.9 s late: still late, not missed
        assert_eq!(
            plan(&s, Missed::Skip, 10_000, 15_900),
            Step::Queue {
                tick: 11_000,
                missed_from: None
            }
        );
        assert_eq!(
            plan(&s, Missed::Skip, 11_000, 15_900),
            Step::Queue {
                tick: 12_000,
                missed_from: None
            }
        );
    }

    #[test]
    fn missed_ticks_follow_the_policy_then_the_schedule_resumes() {
        let s = Schedule::every_ms(1000).unwrap();
        let now = 30_500;
        assert_eq!(
            plan(&s, Missed::Once, 10_000, now),
            Step::Queue {
                tick: 25_000,
                missed_from: Some(11_000)
            }
        );
        // after that: the late ticks 26..30, then wait for 31
        assert_eq!(
            plan(&s, Missed::Once, 25_000, now),
            Step::Queue {
                tick: 26_000,
                missed_from: None
            }
        );
        assert_eq!(plan(&s, Missed::Once, 30_000, now), Step::Wait(31_000));
        assert_eq!(
            plan(&s, Missed::Skip, 10_000, now),
            Step::Skip {
                from: 11_000,
                to: 25_000
            }
        );
    }
}
