//! The stall check (`management=` URL option, `Broker::broker_health`, the
//! poller's WARN and INFO; `action_event/src/broker/amqp/stall.rs`) on
//! RabbitMQ 3.10.8's REAL stall, in phases 6 and 7 of `cluster_e2e`
//! (`cluster_dlx_e2e`), where a node dies while delay queues dead-letter
//! into the work queue it leads. `stall_e2e` covers the rest on one node
//! with a simulated stall.
//!
//! - The phase sees events missing 15 or 20 s after the kill: if
//!   `rabbitmqctl` shows a delay or hold queue holding events neither ready
//!   nor unacked (the stall), then before the leadership move, within 60 s,
//!   `broker_health` names every such queue and the poller has logged a
//!   WARN naming it ([`StallCheck::before_move`]); after the move, the
//!   warning clears and the poller logs "the stall is over"
//!   ([`StallCheck::after_move`]).
//! - No stall: up to 35 s after the kill (the check wants 20 s of stuck
//!   samples, taken every 5 s, and a poller looks every 10 s: checking any
//!   earlier could not fail), `broker_health` has no warning and the
//!   poller logged no WARN about the check ([`StallCheck::quiet`]).

use std::time::{Duration, Instant};

use crate::common::*;
use action_event::Client;
use action_event::broker::BrokerHealth;
use action_event_test_support::rabbit_cluster::RabbitCluster;

/// How long after the kill a stall that began at the kill is surely
/// reported (see the module docs).
const QUIET_AFTER_KILL: Duration = Duration::from_secs(35);
/// The longest wait for a report, and for its end after the move.
const LIMIT: Duration = Duration::from_secs(60);

/// `&management=<every node's API>`, for a world's URL.
pub(crate) fn management(cluster: &RabbitCluster) -> String {
    format!("&management={}", cluster.management_urls())
}

/// The delay and hold queues of `prefix` that `rabbitmqctl` shows holding
/// events neither ready nor unacked (dead-lettered, not moved on), with
/// that count.
pub(crate) fn stuck_queues(cluster: &RabbitCluster, prefix: &str) -> Vec<(String, u64)> {
    // name type leader messages ready unacked consumers
    cluster
        .queue_table(prefix)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
            let (name, m, r, u) = (*f.first()?, n(3)?, n(4)?, n(5)?);
            let kind = name.strip_prefix(prefix)?;
            let held = m.saturating_sub(r + u);
            ((kind.starts_with("delay.") || kind.starts_with("hold.")) && held > 0)
                .then(|| (name.to_string(), held))
        })
        .collect()
}

/// One phase's look at the stall check, from the kill on.
pub(crate) struct StallCheck<'a> {
    rt: &'a tokio::runtime::Runtime,
    w: &'a World,
    /// The poller's log file (in `w`'s directory).
    log: &'a str,
    prefix: String,
    killed: Instant,
    /// Connected with `w`'s URL, which has the `management` option.
    client: Client,
}

impl<'a> StallCheck<'a> {
    /// For the phase's world `w` (its URL with [`management`]), whose
    /// poller logs to `log`, a node of which was killed at `killed`.
    pub(crate) fn new(
        rt: &'a tokio::runtime::Runtime,
        w: &'a World,
        log: &'a str,
        killed: Instant,
    ) -> StallCheck<'a> {
        assert!(w.url.contains("management="), "{}", w.url);
        let client = rt.block_on(w.client());
        StallCheck {
            rt,
            w,
            log,
            prefix: crate::cluster_e2e::prefix_of(w),
            killed,
            client,
        }
    }

    /// One `broker_health` (one look through the management API).
    fn health(&self) -> BrokerHealth {
        self.rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    self.client.broker().broker_health(),
                )
                .await
            })
            .expect("broker_health answered within 20 s")
            .expect("broker_health")
            .expect("quorum queues have a health")
    }

    /// The poller's WARN lines about the stall check.
    fn warns(&self) -> Vec<String> {
        self.w
            .log(self.log)
            .lines()
            .filter(|l| l.contains("WARN") && (l.contains("stall") || l.contains("dead-lettered")))
            .map(str::to_string)
            .collect()
    }

    /// The poller's stall-check lines, for assertion messages.
    fn check_lines(&self) -> String {
        self.w
            .log(self.log)
            .lines()
            .filter(|l| l.contains("stall") || l.contains("dead-lettered"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The phase saw events missing: if `rabbitmqctl` shows the stall,
    /// waits (at most 60 s) until `broker_health` names every stuck queue
    /// and the poller has WARNed about each; returns them (`None`: no
    /// queue is stuck, not the dead-letter stall). Before the leadership
    /// move.
    pub(crate) fn before_move(&self, cluster: &RabbitCluster) -> Option<Vec<String>> {
        let stuck = stuck_queues(cluster, &self.prefix);
        if stuck.is_empty() {
            eprintln!(
                "stall check: {:?} after the kill rabbitmqctl shows no delay or hold queue holding \
                 events neither ready nor unacked: not the dead-letter stall, nothing to check",
                self.killed.elapsed()
            );
            return None;
        }
        let queues: Vec<String> = stuck.iter().map(|(q, _)| q.clone()).collect();
        let names = |lines: &[String]| {
            queues
                .iter()
                .all(|q| lines.iter().any(|l| l.contains(&format!("in `{q}`"))))
        };
        let waited = Instant::now();
        let (mut named, mut warned) = (None, None);
        loop {
            let health = self.health();
            if named.is_none() && names(&health.warnings) {
                named = Some(self.killed.elapsed());
            }
            if warned.is_none() && names(&self.warns()) {
                warned = Some(self.killed.elapsed());
            }
            if let (Some(named), Some(warned)) = (named, warned) {
                eprintln!(
                    "stall check: rabbitmqctl shows {stuck:?} stuck {:?} after the kill; \
                     broker_health named them {named:?} after the kill, the poller's WARN \
                     {warned:?} after (waited {:?}):\n{}",
                    self.killed.elapsed() - waited.elapsed(),
                    waited.elapsed(),
                    health.warnings.join("\n")
                );
                return Some(queues);
            }
            assert!(
                waited.elapsed() < LIMIT,
                "stall check: within {LIMIT:?}, broker_health named {stuck:?} (stuck, rabbitmqctl): \
                 {named:?}, the poller WARNed: {warned:?}; broker_health: {health:?}\nqueues:\n{}\n\
                 the poller's stall-check lines:\n{}",
                cluster.queue_table(&self.prefix),
                self.check_lines()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// After the leadership move (at `moved`) of the stalled `queues`:
    /// waits (at most 60 s) until `broker_health` has no warning left and
    /// the poller logged that each stall is over.
    pub(crate) fn after_move(&self, cluster: &RabbitCluster, queues: &[String], moved: Instant) {
        let (mut clear, mut over) = (None, None);
        loop {
            let health = self.health();
            if clear.is_none() && health.warnings.is_empty() {
                clear = Some(moved.elapsed());
            }
            let log = self.w.log(self.log);
            let ended = |q: &String| {
                log.lines().any(|l| {
                    l.contains("INFO")
                        && l.contains(&format!("`{q}` moves its dead-lettered events on again"))
                        && l.contains("the stall is over")
                })
            };
            if over.is_none() && queues.iter().all(ended) {
                over = Some(moved.elapsed());
            }
            if let (Some(clear), Some(over)) = (clear, over) {
                eprintln!(
                    "stall check: after the leadership move broker_health was clear after \
                     {clear:?}, the poller's \"stall is over\" after {over:?}"
                );
                return;
            }
            assert!(
                moved.elapsed() < LIMIT,
                "stall check: {LIMIT:?} after the leadership move of {queues:?}: broker_health clear: \
                 {clear:?} ({health:?}), the poller's \"stall is over\": {over:?}\nqueues:\n{}\n\
                 the poller's stall-check lines:\n{}",
                cluster.queue_table(&self.prefix),
                self.check_lines()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// No stall: until 35 s after the kill, every 5 s and at the end,
    /// `broker_health` has no warning (nor note: the check is on) and the
    /// poller, whose check is on, logged no WARN about it.
    pub(crate) fn quiet(&self) {
        let log = self.w.log(self.log);
        assert!(
            log.contains("stall check on: "),
            "the poller's stall check is not on:\n{}",
            crate::cluster_dlx_e2e::tail(&log)
        );
        let waited = Instant::now();
        loop {
            let health = self.health();
            let warns = self.warns();
            assert!(
                health == BrokerHealth::default() && warns.is_empty(),
                "stall check: no stall, yet {:?} after the kill broker_health says {health:?} and \
                 the poller WARNed:\n{}",
                self.killed.elapsed(),
                warns.join("\n")
            );
            let left = QUIET_AFTER_KILL.saturating_sub(self.killed.elapsed());
            if left.is_zero() {
                eprintln!(
                    "stall check: no stall, and none reported {:?} after the kill (waited {:?} for that)",
                    self.killed.elapsed(),
                    waited.elapsed()
                );
                return;
            }
            std::thread::sleep(left.min(Duration::from_secs(5)));
        }
    }
}
