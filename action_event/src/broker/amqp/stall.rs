//! Quorum queues: the stall check of RabbitMQ 3.10's at-least-once
//! dead-lettering.
//!
//! Delays, retries and long-event holds go back to their work queue through
//! each delay or hold queue's dead-letter worker. RabbitMQ 3.10.8 can stall
//! that worker for good (the work queue's leader died while events were in
//! flight to it; fixed upstream by rabbitmq-server #6521 and #7677): the
//! events stay in `<prefix>delay.<ms>` or `<prefix>hold.*`, counted in
//! `messages` but neither ready nor unacked, and AMQP cannot see them.
//!
//! With the `management` URL option the check lists this prefix's delay and
//! hold queues through the management API, with their last minute of
//! 5-second samples (`lengths_age`), and reports a queue whose
//! `messages - messages_ready - messages_unacknowledged` has stayed above
//! zero for [`GRACE`] (normal dead-letter transit lasts milliseconds), so
//! one look is enough to decide ([`Tracker`]). A poller's broker runs it
//! every [`EVERY`] while it takes events ([`watch`]): a WARN when a stall
//! begins and every [`REPEAT`] while it holds, an INFO when it clears.
//! `poller status` and the dashboard ask [`Inner::health`] (one look).

use std::collections::{BTreeMap, HashMap};
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;

use super::Inner;
use super::options::QueueType;
use crate::broker::BrokerHealth;
use crate::envelope::now_ms;

/// How long a queue must hold dead-lettered, unforwarded events before it
/// is reported.
pub(super) const GRACE: Duration = Duration::from_secs(20);
/// How often a poller's broker looks.
const EVERY: Duration = Duration::from_secs(10);
/// How often the WARN is repeated while a stall (or a failing check) holds.
const REPEAT: Duration = Duration::from_secs(5 * 60);
/// How much sample history one look asks for (more than [`GRACE`]).
const HISTORY_SECS: u64 = 60;

/// One delay or hold queue as one look saw it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Look {
    pub(super) queue: String,
    /// The node leading it (`?` when the API did not say).
    pub(super) leader: String,
    /// Events dead-lettered but not moved on, now.
    pub(super) stuck: u64,
    /// `(timestamp ms, stuck)` from the API's samples, newest first.
    pub(super) history: Vec<(u64, u64)>,
}

/// A queue reported as stalled.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Stall {
    pub(super) queue: String,
    pub(super) stuck: u64,
    pub(super) leader: String,
    /// When it began, as far as the looks tell (ms since the epoch).
    pub(super) since_ms: u64,
}

impl Stall {
    /// The operator's line: queue, count, leader, since when, the fix.
    pub(super) fn text(&self, vhost: &str, now_ms: u64) -> String {
        let since = chrono::DateTime::from_timestamp_millis(self.since_ms as i64)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "?".into());
        let held = Duration::from_secs(now_ms.saturating_sub(self.since_ms) / 1000);
        let ra = format!("{}_{}", vhost.replace('/', "%2F"), self.queue);
        format!(
            "RabbitMQ holds {n} event(s) in `{q}` dead-lettered but not moved on to their work queue, for {held} (since {since}; leader {leader}): a stalled at-least-once dead-letter worker (RabbitMQ 3.10 bug), nothing is lost. \
             Fix: move the queue's leadership, on node {leader}: rabbitmqctl eval \"ra:transfer_leadership({{'{ra}', node()}}, {{'{ra}', '<another node>'}}).\" (see `rabbitmq-queues quorum_status {q}`), or restart node {leader}. \
             If the work queue they go to was deleted, declare it again (a poller serving it does). Upgrading RabbitMQ fixes the stall (rabbitmq-server #6521, #7677).",
            n = self.stuck,
            q = self.queue,
            held = humantime::format_duration(held),
            leader = self.leader,
        )
    }
}

/// What a look changed, for the poller's log.
#[derive(Debug, PartialEq)]
pub(super) enum Change {
    /// A stall passed the grace period: WARN.
    Began(Stall),
    /// Still stalled, [`REPEAT`] after the last WARN: WARN again.
    Still(Stall),
    /// A reported stall is gone: INFO.
    Cleared { queue: String, since_ms: u64 },
}

#[derive(Debug)]
struct Tracked {
    since_ms: u64,
    warned_at_ms: Option<u64>,
}

/// The decision: which queues have held stuck events for the grace
/// period, over consecutive looks and the samples each look carries.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    open: HashMap<String, Tracked>,
}

impl Tracker {
    /// Takes one look (every delay and hold queue of the prefix); returns
    /// the stalls that passed `grace`, and what changed since the last look.
    pub(super) fn observe(
        &mut self,
        looks: &[Look],
        now_ms: u64,
        grace: Duration,
        repeat: Duration,
    ) -> (Vec<Stall>, Vec<Change>) {
        let grace_ms = grace.as_millis() as u64;
        let repeat_ms = repeat.as_millis() as u64;
        let mut stalls = Vec::new();
        let mut changes = Vec::new();
        let mut seen = Vec::new();
        for look in looks.iter().filter(|l| l.stuck > 0) {
            seen.push(look.queue.clone());
            // The run of stuck samples that ends with the newest one.
            let mut since = now_ms;
            for &(at, stuck) in &look.history {
                if stuck == 0 {
                    break;
                }
                since = since.min(at);
            }
            let t = self.open.entry(look.queue.clone()).or_insert(Tracked {
                since_ms: since,
                warned_at_ms: None,
            });
            t.since_ms = t.since_ms.min(since);
            if now_ms.saturating_sub(t.since_ms) < grace_ms {
                continue;
            }
            let stall = Stall {
                queue: look.queue.clone(),
                stuck: look.stuck,
                leader: look.leader.clone(),
                since_ms: t.since_ms,
            };
            match t.warned_at_ms {
                None => {
                    t.warned_at_ms = Some(now_ms);
                    changes.push(Change::Began(stall.clone()));
                }
                Some(at) if now_ms.saturating_sub(at) >= repeat_ms => {
                    t.warned_at_ms = Some(now_ms);
                    changes.push(Change::Still(stall.clone()));
                }
                Some(_) => {}
            }
            stalls.push(stall);
        }
        let gone: Vec<String> = self
            .open
            .keys()
            .filter(|q| !seen.contains(q))
            .cloned()
            .collect();
        for queue in gone {
            if let Some(t) = self.open.remove(&queue)
                && t.warned_at_ms.is_some()
            {
                changes.push(Change::Cleared {
                    queue,
                    since_ms: t.since_ms,
                });
            }
        }
        changes.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        (stalls, changes)
    }
}

/// The per-broker switch: the watch starts once, at the first `take`.
#[derive(Default)]
pub(super) struct Watch {
    started: AtomicBool,
}

/// One page of `GET /api/queues/<vhost>?page=...`.
#[derive(Deserialize)]
struct Page {
    items: Vec<Row>,
    page_count: u64,
}

#[derive(Deserialize)]
struct Row {
    name: String,
    messages: Option<u64>,
    messages_ready: Option<u64>,
    messages_unacknowledged: Option<u64>,
    leader: Option<String>,
    messages_details: Option<Details>,
    messages_ready_details: Option<Details>,
    messages_unacknowledged_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    samples: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    sample: f64,
    timestamp: u64,
}

impl Row {
    fn look(&self) -> Look {
        let series = |d: &Option<Details>| -> BTreeMap<u64, u64> {
            d.iter()
                .flat_map(|d| &d.samples)
                .map(|s| (s.timestamp, s.sample.max(0.0) as u64))
                .collect()
        };
        let (all, ready, unacked) = (
            series(&self.messages_details),
            series(&self.messages_ready_details),
            series(&self.messages_unacknowledged_details),
        );
        let history = all
            .iter()
            .rev()
            .map(|(at, m)| {
                let other =
                    ready.get(at).copied().unwrap_or(0) + unacked.get(at).copied().unwrap_or(0);
                (*at, m.saturating_sub(other))
            })
            .collect();
        let other = self.messages_ready.unwrap_or(0) + self.messages_unacknowledged.unwrap_or(0);
        Look {
            queue: self.name.clone(),
            leader: self.leader.clone().unwrap_or_else(|| "?".into()),
            stuck: self.messages.unwrap_or(0).saturating_sub(other),
            history,
        }
    }
}

/// `^<prefix>(delay|hold)\.`, the prefix escaped for the API's regex.
fn name_regex(prefix: &str) -> String {
    let mut re = String::from("^");
    for c in prefix.chars() {
        if !c.is_ascii_alphanumeric() {
            re.push('\\');
        }
        re.push(c);
    }
    re.push_str("(delay|hold)\\.");
    re
}

/// The vhost of the AMQP URL, decoded (`/` when it has none).
fn vhost_of(inner: &Inner) -> String {
    url::Url::parse(&inner.opts.lapin_url)
        .ok()
        .map(|u| match u.path() {
            "" | "/" => "/".to_string(),
            p => percent_encoding::percent_decode_str(&p[1..])
                .decode_utf8_lossy()
                .into_owned(),
        })
        .unwrap_or_else(|| "/".into())
}

impl Inner {
    /// One look at every delay and hold queue of the prefix; `None` when
    /// the `management` option is not set.
    async fn look(&self) -> Option<Result<Vec<Look>, String>> {
        let m = self.opts.management.as_ref()?;
        let regex = super::management::encode(&name_regex(&self.opts.prefix));
        let mut looks = Vec::new();
        let mut page = 1;
        loop {
            let path = format!(
                "/api/queues/{}?page={page}&page_size=500&name={regex}&use_regex=true\
                 &lengths_age={HISTORY_SECS}&lengths_incr=5&columns=name,messages,messages_ready,\
                 messages_unacknowledged,leader,messages_details.samples,\
                 messages_ready_details.samples,messages_unacknowledged_details.samples",
                m.vhost_path
            );
            let got: Page = match m.get(&path).await {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            looks.extend(got.items.iter().map(Row::look));
            if page >= got.page_count {
                return Some(Ok(looks));
            }
            page += 1;
        }
    }

    /// What `poller status` and the dashboard show: the stalls one look
    /// finds, or why there was no look.
    pub(super) async fn health(&self) -> Option<BrokerHealth> {
        if self.opts.queue_type != QueueType::Quorum {
            return None;
        }
        let mut health = BrokerHealth::default();
        match self.look().await {
            None => health.notes.push(off_note(&self.opts.prefix)),
            Some(Err(e)) => health.warnings.push(format!(
                "the stall check of the `{}delay.*` and `hold.*` queues cannot read RabbitMQ's management API: {e}",
                self.opts.prefix
            )),
            Some(Ok(looks)) => {
                let now = now_ms();
                let (stalls, _) = Tracker::default().observe(&looks, now, GRACE, REPEAT);
                let vhost = vhost_of(self);
                health.warnings = stalls.iter().map(|s| s.text(&vhost, now)).collect();
            }
        }
        Some(health)
    }

    /// Starts [`watch`] on the first call (quorum queues only); without the
    /// `management` option, says once that the check is off.
    pub(super) fn start_stall_watch(self: &std::sync::Arc<Self>) {
        if self.opts.queue_type != QueueType::Quorum
            || self.stall.started.swap(true, Ordering::SeqCst)
        {
            return;
        }
        match &self.opts.management {
            None => tracing::info!("{}", off_note(&self.opts.prefix)),
            Some(m) => {
                let apis: Vec<String> = m.endpoints.iter().map(|e| e.shown()).collect();
                tracing::info!(
                    "stall check on: the `{}delay.*` and `hold.*` queues are looked at every {} through {}",
                    self.opts.prefix,
                    humantime::format_duration(EVERY),
                    apis.join(", ")
                );
                tokio::spawn(watch(std::sync::Arc::downgrade(self)));
            }
        }
    }
}

fn off_note(prefix: &str) -> String {
    format!(
        "the stall check of the `{prefix}delay.*` and `hold.*` quorum queues is off: RabbitMQ 3.10 can stall their dead-lettering after a node failure and AMQP cannot see it; add `management=http://<host>:15672` to the broker URL (RabbitMQ's management API) to be warned"
    )
}

/// The poller's watch: a look every [`EVERY`] while the broker is open,
/// logging what changed.
async fn watch(inner: Weak<Inner>) {
    let mut tracker = Tracker::default();
    let mut failing_since: Option<(u64, u64)> = None;
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Ordering::SeqCst) {
            return;
        }
        let now = now_ms();
        match i.look().await {
            None => return,
            Some(Ok(looks)) => {
                if failing_since.take().is_some() {
                    tracing::info!("stall check: RabbitMQ's management API answers again");
                }
                let (_, changes) = tracker.observe(&looks, now, GRACE, REPEAT);
                let vhost = vhost_of(&i);
                for c in changes {
                    match c {
                        Change::Began(s) | Change::Still(s) => {
                            tracing::warn!(queue = %s.queue, stuck = s.stuck, "{}", s.text(&vhost, now))
                        }
                        Change::Cleared { queue, since_ms } => tracing::info!(
                            queue = %queue,
                            "`{queue}` moves its dead-lettered events on again (stalled for {}): the stall is over",
                            humantime::format_duration(Duration::from_secs(
                                now.saturating_sub(since_ms) / 1000
                            ))
                        ),
                    }
                }
            }
            Some(Err(e)) => {
                let warn = match failing_since {
                    None => true,
                    Some((_, last)) => now.saturating_sub(last) >= REPEAT.as_millis() as u64,
                };
                if warn {
                    tracing::warn!(
                        "stall check: cannot read RabbitMQ's management API (fix the `management` URL option): {e}"
                    );
                    let first = failing_since.map(|(f, _)| f).unwrap_or(now);
                    failing_since = Some((first, now));
                }
            }
        }
        drop(i);
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(queue: &str, stuck: u64, history: &[(u64, u64)]) -> Look {
        Look {
            queue: queue.into(),
            leader: "rabbit@n1".into(),
            stuck,
            history: history.to_vec(),
        }
    }

    const G: Duration = Duration::from_secs(20);
    const R: Duration = Duration::from_secs(300);

    #[test]
    fn transit_is_not_a_stall_and_a_lasting_one_is() {
        let mut t = Tracker::default();
        // Stuck now, but the samples show it was clear 5 s ago: transit.
        let (s, c) = t.observe(
            &[look("p.delay.1000", 3, &[(95_000, 3), (90_000, 0)])],
            100_000,
            G,
            R,
        );
        assert!(s.is_empty() && c.is_empty());
        // Consecutive looks: still stuck 25 s after the run began.
        let (s, c) = t.observe(&[look("p.delay.1000", 3, &[(114_000, 3)])], 114_999, G, R);
        assert!(s.is_empty() && c.is_empty(), "19.999 s is under the grace");
        let (s, c) = t.observe(&[look("p.delay.1000", 4, &[])], 125_000, G, R);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].stuck, s[0].since_ms), (4, 95_000));
        assert_eq!(c, vec![Change::Began(s[0].clone())]);
        // Still: no second WARN until REPEAT has passed.
        let (s, c) = t.observe(&[look("p.delay.1000", 4, &[])], 135_000, G, R);
        assert_eq!((s.len(), c.len()), (1, 0));
        let (_, c) = t.observe(&[look("p.delay.1000", 4, &[])], 425_000, G, R);
        assert!(matches!(&c[..], [Change::Still(_)]), "{c:?}");
        // Clear: one INFO, then nothing.
        let (s, c) = t.observe(&[look("p.delay.1000", 0, &[])], 430_000, G, R);
        assert!(s.is_empty());
        assert_eq!(
            c,
            vec![Change::Cleared {
                queue: "p.delay.1000".into(),
                since_ms: 95_000
            }]
        );
        let (_, c) = t.observe(&[], 440_000, G, R);
        assert!(c.is_empty());
    }

    #[test]
    fn one_look_with_samples_decides() {
        // A fresh tracker (poller status): 25 s of stuck samples is enough.
        let hist = [
            (100_000, 5),
            (95_000, 5),
            (90_000, 5),
            (85_000, 5),
            (80_000, 5),
            (75_000, 5),
        ];
        let (s, c) = Tracker::default().observe(
            &[look("p.hold.x.y", 5, &hist), look("p.delay.60000", 0, &[])],
            101_000,
            G,
            R,
        );
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].queue.as_str(), s[0].since_ms), ("p.hold.x.y", 75_000));
        assert_eq!(c.len(), 1);
        // A blip that cleared and came back starts over.
        let hist = [(100_000, 5), (95_000, 0), (90_000, 5), (60_000, 5)];
        let (s, _) = Tracker::default().observe(&[look("p.delay.5", 5, &hist)], 101_000, G, R);
        assert!(s.is_empty());
        // A queue that was warned about and disappeared clears.
        let mut t = Tracker::default();
        t.observe(&[look("p.delay.5", 1, &[(0, 1)])], 30_000, G, R);
        let (_, c) = t.observe(&[], 40_000, G, R);
        assert!(matches!(&c[..], [Change::Cleared { .. }]));
    }

    #[test]
    fn the_text_names_queue_count_leader_and_fix() {
        let s = Stall {
            queue: "shop.delay.1000".into(),
            stuck: 7,
            leader: "rabbit@n2".into(),
            since_ms: 1_796_411_260_000,
        };
        let text = s.text("/", 1_796_411_260_000 + 90_000);
        for needle in [
            "7 event(s) in `shop.delay.1000`",
            "for 1m 30s",
            "leader rabbit@n2",
            "ra:transfer_leadership({'%2F_shop.delay.1000', node()}",
            "restart node rabbit@n2",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn the_name_regex_escapes_the_prefix() {
        assert_eq!(name_regex("my-app."), "^my\\-app\\.(delay|hold)\\.");
    }

    #[test]
    fn rows_become_looks() {
        let row: Row = serde_json::from_str(
            r#"{"name":"p.delay.1000","messages":5,"messages_ready":1,"messages_unacknowledged":0,"leader":"rabbit@a",
                "messages_details":{"samples":[{"sample":5,"timestamp":2000},{"sample":2,"timestamp":1000}]},
                "messages_ready_details":{"samples":[{"sample":1,"timestamp":2000},{"sample":2,"timestamp":1000}]},
                "messages_unacknowledged_details":{"samples":[{"sample":0,"timestamp":2000},{"sample":0,"timestamp":1000}]}}"#,
        )
        .expect("row");
        let l = row.look();
        assert_eq!(l.stuck, 4);
        assert_eq!(l.history, vec![(2000, 4), (1000, 0)]);
        let fresh: Row = serde_json::from_str(r#"{"name":"p.hold.a.b"}"#).expect("row");
        assert_eq!((fresh.look().stuck, fresh.look().leader.as_str()), (0, "?"));
    }
}
