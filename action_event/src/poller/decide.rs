//! The retry-or-dead rule: what becomes of an event after one run. A pure
//! function of the run's outcome, its attempt number and the policy (up to
//! the backoff's random jitter, which is 0 in the tests); the broker work
//! that follows is [`run_one`](super::run_one)'s.

use std::time::Duration;

use super::RetryPolicy;
use crate::dispatch::{FailureKind, Outcome};

/// The limits an event runs under.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// The event's `retries` (its own, or inherited), or `None` when this
    /// binary has no handler for its name.
    pub(super) retries: Option<u32>,
    /// Retries of an event no handler of this binary knows (a rolling
    /// deploy may bring its handler).
    pub(super) unknown_retries: u32,
    /// The backoff between attempts.
    pub(super) backoff: RetryPolicy,
}

impl Policy {
    /// Retries allowed after the first attempt.
    pub(super) fn retries(&self) -> u32 {
        self.retries.unwrap_or(self.unknown_retries)
    }

    /// Attempts in all: the first, then the retries.
    pub(super) fn attempts(&self) -> u32 {
        self.retries().saturating_add(1)
    }
}

/// What becomes of an event after a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Settle {
    /// It completed, or a filter halted it: acked, done.
    Ack,
    /// It failed and may succeed on another attempt, in `delay`.
    Retry {
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// It failed for good: to the dead letters.
    Dead(DeadWhy),
}

/// Why a failed event goes to the dead letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DeadWhy {
    /// It failed on its last allowed attempt.
    NoRetriesLeft,
    /// Its params do not fit the event: no attempt can succeed.
    CannotHelp,
}

impl DeadWhy {
    /// How the log line says it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            DeadWhy::NoRetriesLeft => "no retries left",
            DeadWhy::CannotHelp => "retrying cannot help",
        }
    }
}

/// The rule: a completed or halted event is acked; a failure that retrying
/// may fix (an `Err`, a panic, a timeout, a name no handler knows) is
/// retried while `attempt` (1-based, the attempt that just ran) is at most
/// the event's retries, after the backoff for that attempt; anything else
/// is dead: params that do not fit at once, the rest after its last
/// attempt.
pub(super) fn decide(outcome: &Outcome, attempt: u32, policy: &Policy) -> Settle {
    match outcome {
        Outcome::Completed | Outcome::Halted { .. } => Settle::Ack,
        Outcome::Failed(f) if !f.kind.retryable() => Settle::Dead(DeadWhy::CannotHelp),
        Outcome::Failed(_) if attempt <= policy.retries() => Settle::Retry {
            delay: policy.backoff.delay(attempt),
        },
        Outcome::Failed(f) => {
            debug_assert!(f.kind != FailureKind::BadParams);
            Settle::Dead(DeadWhy::NoRetriesLeft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::Failure;

    fn failed(kind: FailureKind) -> Outcome {
        Outcome::Failed(Failure {
            kind,
            message: format!("{kind:?}"),
        })
    }

    /// Retries 3 (4 attempts), unknown events 10; 2 s doubling, no jitter.
    fn policy(retries: Option<u32>) -> Policy {
        Policy {
            retries,
            unknown_retries: 10,
            backoff: RetryPolicy {
                base: Duration::from_secs(2),
                max: Duration::from_secs(60),
                jitter: 0.0,
            },
        }
    }

    fn retry(secs: u64) -> Settle {
        Settle::Retry {
            delay: Duration::from_secs(secs),
        }
    }

    #[test]
    fn completed_and_halted_are_acked_on_any_attempt() {
        for attempt in [1, 4, 99] {
            assert_eq!(
                decide(&Outcome::Completed, attempt, &policy(Some(3))),
                Settle::Ack
            );
            let halted = Outcome::Halted { filter: "auth" };
            assert_eq!(decide(&halted, attempt, &policy(Some(0))), Settle::Ack);
        }
    }

    #[test]
    fn a_failure_with_retries_left_is_retried_after_the_backoff_of_its_attempt() {
        for kind in [FailureKind::Error, FailureKind::Panic, FailureKind::Timeout] {
            let p = policy(Some(3));
            assert_eq!(decide(&failed(kind), 1, &p), retry(2), "{kind:?}");
            assert_eq!(decide(&failed(kind), 2, &p), retry(4), "{kind:?}");
            assert_eq!(decide(&failed(kind), 3, &p), retry(8), "{kind:?}");
        }
    }

    #[test]
    fn a_failure_at_the_last_attempt_is_dead() {
        for kind in [FailureKind::Error, FailureKind::Panic, FailureKind::Timeout] {
            let p = policy(Some(3));
            assert_eq!(p.attempts(), 4);
            assert_eq!(
                decide(&failed(kind), 4, &p),
                Settle::Dead(DeadWhy::NoRetriesLeft),
                "{kind:?}"
            );
            assert_eq!(
                decide(&failed(kind), 5, &p),
                Settle::Dead(DeadWhy::NoRetriesLeft)
            );
        }
    }

    #[test]
    fn no_retries_means_dead_after_the_first_attempt() {
        let p = policy(Some(0));
        assert_eq!(
            decide(&failed(FailureKind::Timeout), 1, &p),
            Settle::Dead(DeadWhy::NoRetriesLeft)
        );
    }

    #[test]
    fn params_that_do_not_fit_are_dead_at_once() {
        for attempt in [1, 2] {
            assert_eq!(
                decide(&failed(FailureKind::BadParams), attempt, &policy(Some(3))),
                Settle::Dead(DeadWhy::CannotHelp)
            );
        }
        assert_eq!(DeadWhy::CannotHelp.as_str(), "retrying cannot help");
        assert_eq!(DeadWhy::NoRetriesLeft.as_str(), "no retries left");
    }

    #[test]
    fn an_unknown_event_is_retried_with_the_unknown_retries_then_dead() {
        let p = policy(None);
        assert_eq!(p.attempts(), 11);
        let unknown = failed(FailureKind::UnknownEvent);
        assert_eq!(decide(&unknown, 1, &p), retry(2));
        assert_eq!(decide(&unknown, 10, &p), retry(60), "capped at max");
        assert_eq!(
            decide(&unknown, 11, &p),
            Settle::Dead(DeadWhy::NoRetriesLeft)
        );
    }

    #[test]
    fn jitter_spreads_the_delay_around_the_backoff() {
        let mut p = policy(Some(3));
        p.backoff.jitter = 0.25;
        for _ in 0..100 {
            let Settle::Retry { delay } = decide(&failed(FailureKind::Error), 2, &p) else {
                panic!("not a retry")
            };
            assert!(
                delay >= Duration::from_secs(3) && delay <= Duration::from_secs(5),
                "{delay:?}"
            );
        }
    }
}
