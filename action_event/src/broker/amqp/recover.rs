//! Recovery from a lost connection: when to try again, and what the log says.
//!
//! The consume side and the status loop rebuild their connections
//! themselves and wait out a [`Backoff`] between attempts: 200 ms doubling,
//! ±25 % jitter, and once a pause would pass [`PROBE_AFTER`] they probe the
//! broker's port every 200-250 ms instead (a TCP connect, plus the TLS
//! handshake for `amqps://`) and connect as soon as it answers. So a poller
//! takes events again well within a second of the broker being back, not
//! after a back-off of seconds (measured: 15-66 ms after `rabbitmqctl
//! start_app` returned, ending an 8-10 s outage; 0.6-2.1 s before).
//!
//! The log gets one WARN line per loss and one INFO line once it is back,
//! whichever of the broker's connections (publish, consume, status) notices
//! first (see [`Link`]); everything in between is DEBUG. lapin's own log
//! lines (it logs a closed connection as ERROR) are not the library's: the
//! poller's default log filter leaves them out (`RUST_LOG=info,lapin=debug`
//! shows them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// First pause of a [`Backoff`]; it doubles up to its `max`.
pub(super) const RETRY_MIN: Duration = Duration::from_millis(200);
/// Once a [`Backoff`] pause would be longer than this, the broker is probed
/// instead of waited for.
pub(super) const PROBE_AFTER: Duration = Duration::from_millis(400);
/// Probes of a [`Backoff`] are this far apart (plus up to [`PROBE_JITTER`]);
/// a probe gives up after this long.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_JITTER: Duration = Duration::from_millis(50);

/// A connection of the broker, for [`Link`].
#[derive(Clone, Copy, Debug)]
pub(super) enum Role {
    Publish = 1,
    Consume = 2,
    Status = 4,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Consume => "consume",
            Role::Status => "status",
        }
    }
}

/// Whether the broker's connections are up, for the log. A broker that goes
/// away takes every connection at once (a poller has three) and fails every
/// ack in flight: the first connection to notice logs one WARN line; once
/// every connection lost is back and none was lost again for [`QUIET`], one
/// INFO line; everything in between is DEBUG.
pub(super) struct Link {
    /// The URL, password redacted.
    url: String,
    /// [`Role`] bits of the connections that are down.
    down: AtomicU8,
    /// A loss was logged and its end not yet.
    reported: AtomicBool,
    /// Losses so far: a quiet period that saw one does not end the outage.
    losses: AtomicU64,
    /// Acks and releases not sent because their connection was gone, not
    /// logged yet.
    unsent: AtomicU64,
}

/// How long every connection must stay up before the loss is over (see [`Link`]).
const QUIET: Duration = Duration::from_millis(500);

impl Link {
    pub(super) fn new(url: String) -> Link {
        Link {
            url,
            down: AtomicU8::new(0),
            reported: AtomicBool::new(false),
            losses: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
        }
    }

    /// `role`'s connection is lost (or could not be made).
    pub(super) fn lost(&self, role: Role, why: &dyn std::fmt::Display) {
        self.down.fetch_or(role as u8, Ordering::SeqCst);
        self.losses.fetch_add(1, Ordering::SeqCst);
        if !self.reported.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                url = %self.url,
                "lost the connection to RabbitMQ ({} connection: {why}); reconnecting. Events in hand \
                 cannot be acked: the broker delivers them again",
                role.name()
            );
        } else {
            tracing::debug!(url = %self.url, role = role.name(), error = %why, "RabbitMQ connection lost");
        }
    }

    /// `role`'s connection is up (again).
    pub(super) fn back(self: &Arc<Self>, role: Role) {
        let bit = role as u8;
        let before = self.down.fetch_and(!bit, Ordering::SeqCst);
        tracing::debug!(url = %self.url, role = role.name(), "RabbitMQ connection made");
        if before & bit == 0 || before != bit || !self.reported.load(Ordering::SeqCst) {
            return;
        }
        let losses = self.losses.load(Ordering::SeqCst);
        let link = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(QUIET).await;
            if link.down.load(Ordering::SeqCst) == 0
                && link.losses.load(Ordering::SeqCst) == losses
                && link.reported.swap(false, Ordering::SeqCst)
            {
                tracing::info!(url = %link.url, "connected to RabbitMQ again");
            }
        });
    }

    /// An ack or release was not sent: its connection was gone.
    pub(super) fn unsent(&self) {
        self.unsent.fetch_add(1, Ordering::SeqCst);
    }

    /// Logs the acks and releases not sent since the last report, once.
    pub(super) fn report_unsent(&self) {
        let n = self.unsent.swap(0, Ordering::SeqCst);
        if n > 0 {
            tracing::warn!(
                url = %self.url, count = n,
                "{n} event(s) were not acked or released: their connection to RabbitMQ was gone. \
                 The broker delivers them again (at least once)"
            );
        }
    }
}

/// When to try to connect again while the broker is away (see the module
/// docs): the pause doubles from [`RETRY_MIN`] up to `max`, ±25 % jitter;
/// once it is past [`PROBE_AFTER`], a probe every 200-250 ms may cut it
/// short.
pub(super) struct Backoff {
    pause: Duration,
    max: Duration,
    /// When the next attempt is due (none: now).
    next: Option<Instant>,
    /// When the next probe is due.
    probe_at: Option<Instant>,
}

/// What a [`Backoff`] says to do now.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Due {
    Attempt,
    /// Not yet due, but probe the broker: connect now if it answers.
    Probe,
    Wait,
}

impl Backoff {
    pub(super) fn new(max: Duration) -> Backoff {
        Backoff {
            pause: RETRY_MIN,
            max,
            next: None,
            probe_at: None,
        }
    }

    /// Connected: the next loss starts from the first pause.
    pub(super) fn reset(&mut self) {
        self.pause = RETRY_MIN;
        self.next = None;
        self.probe_at = None;
    }

    /// An attempt failed: returns the pause before the next one.
    pub(super) fn failed(&mut self) -> Duration {
        let pause = self.pause.mul_f64(rand::random_range(0.75..=1.25));
        self.next = Some(Instant::now() + pause);
        self.probe_at = None;
        if pause > PROBE_AFTER {
            self.probed();
        }
        self.pause = (self.pause * 2).min(self.max);
        pause
    }

    /// A probe found the broker away (or the pause is long): the next
    /// probe in 200-250 ms.
    pub(super) fn probed(&mut self) {
        let jitter = PROBE_JITTER.mul_f64(rand::random_range(0.0..=1.0));
        self.probe_at = Some(Instant::now() + PROBE_EVERY + jitter);
    }

    /// When [`Backoff::due`] changes next (none: it says `Attempt` now).
    pub(super) fn wake_at(&self) -> Option<Instant> {
        let next = self.next?;
        Some(self.probe_at.map_or(next, |p| p.min(next)))
    }

    pub(super) fn due(&self) -> Due {
        let now = Instant::now();
        if self.next.is_none_or(|t| now >= t) {
            Due::Attempt
        } else if self.probe_at.is_some_and(|t| now >= t) {
            Due::Probe
        } else {
            Due::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, lo: u64, hi: u64) -> bool {
        (Duration::from_millis(lo)..=Duration::from_millis(hi)).contains(&d)
    }

    #[test]
    fn backoff_doubles_with_jitter_then_probes_every_quarter_second() {
        let mut b = Backoff::new(Duration::from_secs(5));
        assert_eq!(b.due(), Due::Attempt);
        let first = b.failed();
        assert!(within(first, 150, 250), "{first:?}");
        assert_eq!(b.due(), Due::Wait, "short pauses are waited out");
        assert_eq!(b.probe_at, None);
        let second = b.failed();
        assert!(within(second, 300, 500), "{second:?}");
        let third = b.failed();
        assert!(within(third, 600, 1000), "{third:?}");
        assert_eq!(b.due(), Due::Wait);
        let wake = b.wake_at().expect("a wake-up");
        assert!(
            wake <= Instant::now() + PROBE_EVERY + PROBE_JITTER,
            "probed within 250 ms"
        );
        std::thread::sleep(PROBE_EVERY + PROBE_JITTER + Duration::from_millis(10));
        assert_eq!(b.due(), Due::Probe, "a long pause is cut short by probes");
        b.probed();
        assert_eq!(b.due(), Due::Wait, "the next probe 200-250 ms later");
        for _ in 0..10 {
            b.failed();
        }
        assert_eq!(
            b.pause,
            Duration::from_secs(5),
            "the pause stops at its max"
        );
        b.reset();
        assert_eq!(b.due(), Due::Attempt);
        assert!(within(b.failed(), 150, 250), "reset starts over");
    }
}
