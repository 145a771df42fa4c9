//! How a poller runs: its queues, concurrency, backoff and limits.

use std::path::PathBuf;
use std::time::Duration;

use super::PollerInfo;
use crate::registry::DEFAULT_RETRIES;

/// The queues a poller serves when none are given: these, then any other
/// queue a registered event names.
pub const DEFAULT_QUEUES: [&str; 3] = ["high", "medium", "low"];

/// How long a failed event waits before its next attempt: `base * 2^(n-1)`,
/// capped at `max`, times a random factor in `[1 - jitter, 1 + jitter]`.
///
/// ```
/// use std::time::Duration;
/// use action_event::poller::RetryPolicy;
/// let p = RetryPolicy { base: Duration::from_secs(2), max: Duration::from_secs(3600), jitter: 0.0 };
/// assert_eq!(p.delay(1), Duration::from_secs(2));
/// assert_eq!(p.delay(3), Duration::from_secs(8));
/// assert_eq!(p.delay(40), Duration::from_secs(3600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Spread, 0.0 to 1.0: 0.25 means ±25%.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 2s, 4s, 8s ... up to one hour, ±25%: the default ten retries span
    /// about 34 minutes.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(3600),
            jitter: 0.25,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(40);
        let raw = self.base.as_secs_f64() * 2f64.powi(exp as i32);
        let capped = raw.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            1.0 + rand::random_range(-jitter..=jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

/// How a poller runs.
///
/// ```
/// use action_event::poller::PollerConfig;
/// let config = PollerConfig { concurrency: 8, ..PollerConfig::default() };
/// assert_eq!(config.queues, vec!["high", "medium", "low"]);
/// ```
#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// Queues, highest priority first.
    pub queues: Vec<String>,
    /// Events run at once. A slot frees when an event's handler returns;
    /// its ack then finishes in the background (a stop still waits for it).
    pub concurrency: usize,
    /// Exit once every queue is empty and nothing is in hand.
    pub exit_when_empty: bool,
    /// On a stop, how long events in hand may take before they are given back.
    pub shutdown_timeout: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// How many times an event whose name no handler of this binary knows
    /// is retried before it goes to the dead letters (default
    /// [`crate::DEFAULT_RETRIES`]): a rolling deploy may bring its handler, so it
    /// is not dead-lettered at once.
    pub unknown_retries: u32,
    /// How long one `take` waits when nothing is ready.
    pub idle_wait: Duration,
    /// The PID file this poller owns: when it stops naming this process the
    /// poller finishes what it has in hand and exits.
    pub pid_file: Option<PathBuf>,
    /// Who this poller is (id, host, queues, concurrency...) in the reports
    /// `poller status` gets from the broker ([`crate::broker::Broker::pollers`]); the CLI's
    /// `start` fills it. `None`: id `-`, this host and pid, `queues`,
    /// `concurrency` and the broker's URL.
    pub identity: Option<PollerInfo>,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            queues: DEFAULT_QUEUES.iter().map(|q| q.to_string()).collect(),
            concurrency: 1,
            exit_when_empty: false,
            shutdown_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            unknown_retries: DEFAULT_RETRIES,
            idle_wait: Duration::from_millis(500),
            pid_file: None,
            identity: None,
        }
    }
}
