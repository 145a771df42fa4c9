//! End to end, failures: retries with backoff, panics, timeouts, dead
//! letters and their commands, bad input, delayed events, and a SIGKILL
//! while retries are in flight. Real poller processes
//! (tests/support/e2e_poller.rs) on a real broker; every test runs against
//! every backend this machine offers (see `common::backends`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use action_event::broker::DeadEvent;
use action_event::envelope::now_ms;
use action_event::prelude::*;
use action_event::{Envelope, QueueRequest};
use serde_json::json;

/// The poller's `record` event, typed, so this test binary can queue it with
/// `queue!` (params checked) and `QueueExt::queue_in/queue_at`. It only
/// runs in the e2e poller.
#[derive(Debug, Serialize, Deserialize)]
#[action_event]
struct RecordEvent {
    tag: String,
    #[serde(default)]
    sleep_ms: u64,
}

impl Process for RecordEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

/// A poller on `queues` with the fast backoff.
const FAST: [&str; 2] = ["--retry-base", "50ms"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = FAST.to_vec();
    v.extend_from_slice(extra);
    v
}

fn dead_by_id<'a>(dead: &'a [DeadEvent], id: &EventId) -> &'a DeadEvent {
    let id = id.to_string();
    dead.iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no dead letter {id} in {dead:#?}"))
}

fn has_dead(dead: &[DeadEvent], id: &EventId) -> bool {
    let id = id.to_string();
    dead.iter().any(|d| d.id == id)
}

fn ended(records: &[Record], tag: &str) -> bool {
    records.iter().any(|r| r.what == "end" && r.tag == tag)
}

/// Queues `n` plain `record` events tagged `<tag>-<i>`, to check the poller
/// keeps doing its normal work next to a failure.
async fn queue_side_work(w: &World, n: usize, tag: &str) {
    w.queue_records(n, "medium", tag, 0).await;
}

fn all_ended(records: &[Record], n: usize, tag: &str) -> bool {
    let ends = ends_by_tag(records);
    (0..n).all(|i| ends.contains_key(&format!("{tag}-{i}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failing_twice_succeeds_on_its_third_attempt() {
    for backend in backends() {
        let w = World::new(&backend);
        let id = w
            .queue_json("flaky", "medium", json!({"tag": "f", "fail_times": 2}))
            .await;
        let mut p = w.spawn("p.log", &args(&["--queues", "medium"]));
        w.wait_records(Duration::from_secs(60), "flaky to succeed", |r| {
            ended(r, "f")
        });
        // Time for a (wrong) fourth attempt to show up.
        std::thread::sleep(Duration::from_millis(500));
        stop(&mut p, "poller");
        let records = w.records();
        let f = of_tag(&records, "f");
        let seen: Vec<(&str, u32)> = f.iter().map(|r| (r.what.as_str(), r.attempt)).collect();
        assert_eq!(
            seen,
            [
                ("start", 1),
                ("fail", 1),
                ("start", 2),
                ("fail", 2),
                ("start", 3),
                ("end", 3)
            ],
            "{backend:?}: {f:?}"
        );
        assert!(f.iter().all(|r| r.id == id.to_string()));
        // Backoff after the failure: 50ms then 100ms, ±25%: never earlier than that.
        let gap1 = f[2].ms - f[1].ms;
        let gap2 = f[4].ms - f[3].ms;
        assert!(
            gap1 >= 37 && gap2 >= 75,
            "{backend:?}: gaps {gap1}ms {gap2}ms"
        );
        let log = w.log("p.log");
        for attempt in [1, 2] {
            assert!(
                log.contains(&format!(
                    "Failed processing medium:{id} (attempt {attempt} of 4"
                )) && log.contains(&format!("flaky failure on attempt {attempt}; retrying in")),
                "{backend:?}: {log}"
            );
        }
        assert!(
            log.contains(&format!("Finished processing medium:{id}")),
            "{log}"
        );
        assert!(
            log.contains("1 completed, 0 halted, 2 retried, 0 dead"),
            "{log}"
        );
        assert!(w.dead().await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_are_dead_letters_that_can_be_shown_retried_and_purged() {
    for backend in backends() {
        let w = World::new(&backend);
        let queued_at = now_ms();
        let id = w.queue_json("gated", "medium", json!({"tag": "g0"})).await;
        queue_side_work(&w, 10, "side").await;
        let mut p = w.spawn("p.log", &args(&["--queues", "medium low"]));
        let dead = w
            .wait_dead(Duration::from_secs(60), "gated to die", |d| {
                has_dead(d, &id)
            })
            .await;

        // Through the Broker API: everything is kept.
        let d = dead_by_id(&dead, &id);
        assert_eq!(d.name.as_deref(), Some("gated"));
        assert_eq!(d.queue, "medium");
        assert_eq!(d.attempts, 3, "retries = 2: three attempts");
        assert_eq!(d.errors.len(), 3, "{d:#?}");
        for (i, e) in d.errors.iter().enumerate() {
            assert_eq!(e.attempt, i as u32 + 1);
            assert_eq!(e.message, "event `gated`: gate `g0` is closed", "{d:#?}");
            assert!(e.at_ms >= queued_at);
        }
        assert!(d.errors.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(d.died_at_ms >= d.errors[2].at_ms);
        assert_eq!(d.reason, d.errors[2].message);
        let body = Envelope::from_slice(d.body.as_bytes()).expect("the body is the envelope");
        assert_eq!(body.params, json!({"tag": "g0"}), "params are kept");
        let seen: Vec<(String, u32)> = of_tag(&w.records(), "g0")
            .iter()
            .map(|r| (r.what.clone(), r.attempt))
            .collect();
        let expected: Vec<(String, u32)> = (1..=3)
            .flat_map(|a| [("start".to_string(), a), ("fail".to_string(), a)])
            .collect();
        assert_eq!(seen, expected);

        // Through the command line.
        let list = w.run_ok(&["dead", "list"]);
        let line = list
            .lines()
            .find(|l| l.contains(&id.to_string()))
            .unwrap_or_else(|| panic!("{list}"));
        assert!(
            line.contains("  medium  gated  attempts=3  died=")
                && line.contains("event `gated`: gate `g0` is closed"),
            "{line}"
        );
        assert!(
            w.run_ok(&["dead", "list", "--queue", "medium"])
                .contains(&id.to_string())
        );
        assert!(
            w.run_ok(&["dead", "list", "--event", "gated"])
                .contains(&id.to_string())
        );
        assert_eq!(
            w.run_ok(&["dead", "list", "--event", "record"]),
            "No dead events\n"
        );
        assert_eq!(
            w.run_ok(&["dead", "list", "--queue", "low"]),
            "No dead events\n"
        );
        let show = w.run_ok(&["dead", "show", &id.to_string()]);
        for needle in [
            format!("id:       {id}"),
            "event:    gated".to_string(),
            "queue:    medium".to_string(),
            "attempts: 3".to_string(),
            "reason:   event `gated`: gate `g0` is closed".to_string(),
            r#""tag":"g0""#.to_string(),
        ] {
            assert!(show.contains(&needle), "{needle} in:\n{show}");
        }
        for attempt in 1..=3 {
            assert!(
                show.lines()
                    .any(|l| l.starts_with(&format!("  attempt {attempt} at "))
                        && l.ends_with(": event `gated`: gate `g0` is closed")),
                "{show}"
            );
        }
        let out = w.run(&["dead", "show", "no-such-id"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no dead event with id `no-such-id`")
        );

        // Fixed, then retried: back on its queue with a fresh attempt count.
        w.open_gate("g0");
        assert_eq!(
            w.run_ok(&["dead", "retry", &id.to_string()]),
            "Retried 1 dead event(s)\n"
        );
        let records = w.wait_records(Duration::from_secs(60), "g0 to complete", |r| {
            ended(r, "g0")
        });
        let g0 = of_tag(&records, "g0");
        assert_eq!(
            g0.iter()
                .map(|r| (r.what.as_str(), r.attempt))
                .collect::<Vec<_>>()[6..],
            [("start", 1), ("end", 1)],
            "{g0:?}"
        );
        assert!(!has_dead(&w.dead().await, &id));

        // Purge: by id, by age, all; retry --all.
        let g1 = w.queue_json("gated", "medium", json!({"tag": "g1"})).await;
        let g2 = w.queue_json("gated", "low", json!({"tag": "g2"})).await;
        let g3 = w.queue_json("gated", "medium", json!({"tag": "g3"})).await;
        w.wait_dead(Duration::from_secs(60), "g1, g2, g3 to die", |d| {
            [g1, g2, g3].iter().all(|i| has_dead(d, i))
        })
        .await;
        let low = w.run_ok(&["dead", "list", "--queue", "low"]);
        assert!(
            low.contains(&g2.to_string()) && low.lines().count() == 1,
            "{low}"
        );
        assert_eq!(
            w.run_ok(&["dead", "purge", &g1.to_string()]),
            "Purged 1 dead event(s)\n"
        );
        assert!(!w.run(&["dead", "show", &g1.to_string()]).status.success());
        assert_eq!(
            w.run_ok(&["dead", "purge", "--older-than", "7d"]),
            "Purged 0 dead event(s)\n"
        );
        let out = w.run(&["dead", "purge"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("give one id, --all or --older-than")
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        let g4 = w.queue_json("gated", "medium", json!({"tag": "g4"})).await;
        w.wait_dead(Duration::from_secs(60), "g4 to die", |d| has_dead(d, &g4))
            .await;
        assert_eq!(
            w.run_ok(&["dead", "purge", "--older-than", "3s"]),
            "Purged 2 dead event(s)\n"
        );
        let dead = w.dead().await;
        assert_eq!(dead.len(), 1, "{dead:#?}");
        assert_eq!(dead[0].id, g4.to_string());
        w.open_gate("g4");
        assert_eq!(
            w.run_ok(&["dead", "retry", "--all"]),
            "Retried 1 dead event(s)\n"
        );
        w.wait_records(Duration::from_secs(60), "g4 to complete", |r| {
            ended(r, "g4")
        });
        let g5 = w.queue_json("gated", "medium", json!({"tag": "g5"})).await;
        w.wait_dead(Duration::from_secs(60), "g5 to die", |d| has_dead(d, &g5))
            .await;
        assert_eq!(
            w.run_ok(&["dead", "purge", "--all"]),
            "Purged 1 dead event(s)\n"
        );
        assert_eq!(w.run_ok(&["dead", "list"]), "No dead events\n");

        assert!(all_ended(&w.records(), 10, "side"));
        stop(&mut p, "poller");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_caught_counted_as_a_failure_and_the_poller_keeps_going() {
    for backend in backends() {
        let w = World::new(&backend);
        queue_side_work(&w, 20, "before").await;
        let id = w.queue_json("boom", "medium", json!({"tag": "b"})).await;
        queue_side_work(&w, 20, "after").await;
        let mut p = w.spawn(
            "p.log",
            &args(&["--queues", "medium", "--concurrency", "2"]),
        );
        let dead = w
            .wait_dead(Duration::from_secs(60), "boom to die", |d| has_dead(d, &id))
            .await;
        let d = dead_by_id(&dead, &id);
        assert_eq!(d.attempts, 2, "retries = 1");
        assert_eq!(
            d.errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>(),
            ["event `boom` panicked: boom in b"; 2]
        );
        w.wait_records(Duration::from_secs(60), "the other events", |r| {
            all_ended(r, 20, "before") && all_ended(r, 20, "after")
        });
        assert!(alive(&mut p), "a panic must not take the poller down");
        // Still taking new work after the panics.
        queue_side_work(&w, 5, "later").await;
        w.wait_records(
            Duration::from_secs(60),
            "events queued after the panic",
            |r| all_ended(r, 5, "later"),
        );
        stop(&mut p, "poller");
        let log = w.log("p.log");
        assert!(
            log.contains(&format!("Failed processing medium:{id} (attempt 1 of 2"))
                && log.contains("event `boom` panicked: boom in b; retrying in"),
            "{log}"
        );
        assert!(
            log.contains(&format!("Failed processing medium:{id} (attempt 2 of 2"))
                && log.contains("no retries left, moved to the dead letters"),
            "{log}"
        );
        assert!(
            log.contains("45 completed, 0 halted, 1 retried, 1 dead"),
            "{log}"
        );
        // The panic itself is logged, inside the span of its event, once per attempt.
        for attempt in [1, 2] {
            let fields = [
                "event=boom".to_string(),
                format!("id={id}"),
                format!("attempt={attempt}"),
            ];
            assert!(
                log.lines().any(|l| l.contains(" ERROR ")
                    && fields.iter().all(|f| l.contains(f.as_str()))
                    && l.contains("}: panicked at ")
                    && l.ends_with(": boom in b")),
                "a panic line with {fields:?} in:\n{log}"
            );
        }
        assert!(
            !log.contains("thread '"),
            "raw panic output on stderr:\n{log}"
        );

        // With --log-format json, the log stays JSON through a panic.
        let id = w.queue_json("boom", "medium", json!({"tag": "j"})).await;
        let mut j = w.spawn(
            "j.log",
            &args(&["--queues", "medium", "--log-format", "json"]),
        );
        w.wait_dead(Duration::from_secs(60), "boom j to die", |d| {
            has_dead(d, &id)
        })
        .await;
        stop(&mut j, "json poller");
        let log = w.log("j.log");
        let mut panics = 0;
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"));
            let message = v["fields"]["message"].as_str().unwrap_or_default();
            if message.starts_with("panicked at ") {
                assert!(message.contains("boom in j"), "{line}");
                assert_eq!(v["level"], "ERROR");
                assert_eq!(v["span"]["event"], "boom", "{line}");
                assert_eq!(v["span"]["id"], id.to_string(), "{line}");
                panics += 1;
            }
        }
        assert_eq!(panics, 2, "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_the_handler_and_is_inherited_and_overridable() {
    for backend in backends() {
        let w = World::new(&backend);
        let sleepy = w.queue_json("sleepy", "medium", json!({"tag": "s"})).await;
        let inherits = w
            .queue_json(
                "inherits_fuse",
                "medium",
                json!({"tag": "i", "sleep_ms": 4000}),
            )
            .await;
        w.queue_json(
            "overrides_fuse",
            "medium",
            json!({"tag": "o", "sleep_ms": 1500}),
        )
        .await;
        queue_side_work(&w, 20, "side").await;
        let mut p = w.spawn(
            "p.log",
            &args(&["--queues", "medium", "--concurrency", "4"]),
        );
        let dead = w
            .wait_dead(
                Duration::from_secs(60),
                "sleepy and inherits_fuse to die",
                |d| has_dead(d, &sleepy) && has_dead(d, &inherits),
            )
            .await;
        let records = w.wait_records(Duration::from_secs(60), "the rest", |r| {
            ended(r, "o") && all_ended(r, 20, "side")
        });

        // `sleepy`: retries = 0, timeout = "1s", sleeps 10s.
        let d = dead_by_id(&dead, &sleepy);
        assert_eq!(d.attempts, 1);
        assert_eq!(d.reason, "event `sleepy` timed out after 1s");
        let start = of_tag(&records, "s")[0].ms;
        let took = d.died_at_ms - start;
        assert!(
            (900..9000).contains(&took),
            "{backend:?}: cut after {took}ms"
        );
        assert!(!ended(&records, "s"));

        // Inherits `retries = 1, timeout = "1s"` from its base.
        let d = dead_by_id(&dead, &inherits);
        assert_eq!(d.attempts, 2);
        assert_eq!(
            d.errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>(),
            ["event `inherits_fuse` timed out after 1s"; 2]
        );
        assert!(!ended(&w.records(), "i"));

        // Overrides the timeout with 5s: its 1.5s run completes first time.
        let o: Vec<_> = of_tag(&records, "o")
            .iter()
            .map(|r| (r.what.clone(), r.attempt))
            .collect();
        assert_eq!(o, [("start".into(), 1), ("end".into(), 1)]);

        assert!(alive(&mut p));
        stop(&mut p, "poller");
        let log = w.log("p.log");
        for line in [
            "inherits_fuse (e2e_poller::InheritsFuseEvent) queue=medium retries=1 timeout=1s",
            "overrides_fuse (e2e_poller::OverridesFuseEvent) queue=medium retries=1 timeout=5s",
        ] {
            assert!(log.contains(line), "{line} in:\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_at_once_with_the_raw_body() {
    for backend in backends() {
        let w = World::new(&backend);
        let not_json = "this is {not json";
        let not_envelope = r#"{"hello":"world"}"#;
        let bad_params = r#"{"v":1,"id":"01936f0e-0000-7000-8000-000000000001","name":"record","queue":"medium","params":[1,2]}"#;
        queue_side_work(&w, 10, "before").await;
        for body in [not_json, not_envelope, bad_params] {
            w.publish_raw("medium", body.as_bytes()).await;
        }
        queue_side_work(&w, 10, "after").await;
        let mut p = w.spawn(
            "p.log",
            &args(&["--queues", "medium", "--concurrency", "2"]),
        );
        let dead = w
            .wait_dead(Duration::from_secs(60), "three dead letters", |d| {
                d.len() == 3
            })
            .await;
        let by_body: HashMap<&str, &DeadEvent> =
            dead.iter().map(|d| (d.body.as_str(), d)).collect();

        let d = by_body.get(not_json).unwrap_or_else(|| panic!("{dead:#?}"));
        assert_eq!(d.name, None);
        assert!(
            d.reason.starts_with("invalid envelope: not valid JSON: "),
            "{}",
            d.reason
        );
        let d = by_body
            .get(not_envelope)
            .unwrap_or_else(|| panic!("{dead:#?}"));
        assert!(
            d.reason.starts_with(
                "invalid envelope: JSON that is not an action_event envelope: missing field"
            ),
            "{}",
            d.reason
        );
        let d = by_body
            .get(bad_params)
            .unwrap_or_else(|| panic!("{dead:#?}"));
        assert_eq!(d.name.as_deref(), Some("record"));
        assert_eq!(
            d.reason,
            "invalid envelope: event `record`: params must be a JSON object, got `[1,2]`"
        );
        for d in &dead {
            assert_eq!(d.queue, "medium");
            assert_eq!(d.attempts, 1, "dead at once");
            assert_eq!(d.errors.len(), 1);
            assert_eq!(d.errors[0].message, d.reason);
            assert!(d.errors[0].at_ms > 0 && d.died_at_ms >= d.errors[0].at_ms);
        }

        w.wait_records(Duration::from_secs(60), "the other events", |r| {
            all_ended(r, 10, "before") && all_ended(r, 10, "after")
        });
        assert!(alive(&mut p));

        // The command line shows them, raw body included.
        let list = w.run_ok(&["dead", "list"]);
        assert_eq!(list.lines().count(), 3, "{list}");
        let raw = by_body[not_json];
        assert!(
            list.lines()
                .any(|l| l.contains(&raw.id) && l.contains("  medium  ?  attempts=1  ")),
            "{list}"
        );
        let show = w.run_ok(&["dead", "show", &raw.id]);
        assert!(show.contains(&format!("body:     {not_json}")), "{show}");
        assert!(show.contains("invalid envelope: not valid JSON"), "{show}");
        // It cannot be put back as an event: it stays where a person sees it.
        assert_eq!(
            w.run_ok(&["dead", "retry", &raw.id]),
            "Retried 0 dead event(s)\n"
        );
        assert_eq!(w.dead().await.len(), 3);
        stop(&mut p, "poller");
        let log = w.log("p.log");
        assert!(
            log.contains("Unreadable message on medium: invalid envelope: not valid JSON"),
            "{log}"
        );
        assert!(
            log.contains("20 completed, 0 halted, 0 retried, 3 dead"),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_that_do_not_fit_are_dead_lettered_at_once_naming_event_and_field() {
    for backend in backends() {
        let w = World::new(&backend);
        let count = w
            .queue_json(
                "typed",
                "medium",
                json!({"tag": "t1", "count": "many", "people_ids": [1, 2]}),
            )
            .await;
        let people = w
            .queue_json(
                "typed",
                "medium",
                json!({"tag": "t2", "count": 3, "people_ids": [1, "two", 3]}),
            )
            .await;
        w.queue_json(
            "typed",
            "medium",
            json!({"tag": "t3", "count": 3, "people_ids": [1]}),
        )
        .await;
        queue_side_work(&w, 10, "side").await;
        let mut p = w.spawn("p.log", &args(&["--queues", "medium"]));
        let dead = w
            .wait_dead(Duration::from_secs(60), "two dead letters", |d| {
                has_dead(d, &count) && has_dead(d, &people)
            })
            .await;
        let d = dead_by_id(&dead, &count);
        assert_eq!(
            d.reason,
            "event `typed`: params do not fit at `count`: invalid type: string \"many\", expected u32"
        );
        assert_eq!((d.attempts, d.errors.len()), (1, 1), "dead at once");
        assert_eq!(d.name.as_deref(), Some("typed"));
        let d = dead_by_id(&dead, &people);
        assert!(
            d.reason.starts_with(
                "event `typed`: params do not fit at `people_ids[1]`: invalid type: string \"two\""
            ),
            "{}",
            d.reason
        );
        assert_eq!((d.attempts, d.errors.len()), (1, 1), "dead at once");
        w.wait_records(Duration::from_secs(60), "the other events", |r| {
            ended(r, "t3") && all_ended(r, 10, "side")
        });
        assert!(alive(&mut p));
        stop(&mut p, "poller");
        let log = w.log("p.log");
        assert!(
            log.contains("params do not fit at `count`")
                && log.contains("retrying cannot help, moved to the dead letters"),
            "{log}"
        );
        assert_eq!(w.dead().await.len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_is_retried_then_dead_lettered_naming_the_known_events() {
    for backend in backends() {
        let w = World::new(&backend);
        let id = w
            .queue_json("no_such_event", "medium", json!({"x": 1}))
            .await;
        queue_side_work(&w, 10, "side").await;
        let mut p = w.spawn(
            "p.log",
            &args(&["--queues", "medium", "--unknown-retries", "2"]),
        );
        let dead = w
            .wait_dead(Duration::from_secs(60), "the unknown event to die", |d| {
                has_dead(d, &id)
            })
            .await;
        let d = dead_by_id(&dead, &id);
        assert_eq!(d.name.as_deref(), Some("no_such_event"));
        assert_eq!(d.attempts, 3, "--unknown-retries 2: three attempts");
        assert_eq!(d.errors.len(), 3);
        let known = "unknown event `no_such_event`: this binary knows `abort`, `boom`, `flaky`, \
                     `gated`, `halted`, `inherits_fuse`, `overrides_fuse`, `record`, `sleepy`, `typed`";
        for e in &d.errors {
            assert_eq!(e.message, known);
        }
        w.wait_records(Duration::from_secs(60), "the other events", |r| {
            all_ended(r, 10, "side")
        });
        assert!(alive(&mut p));
        stop(&mut p, "poller");
        let log = w.log("p.log");
        assert!(
            log.contains(&format!("Failed processing medium:{id} (attempt 1 of 3")),
            "{log}"
        );

        // Without the option: DEFAULT_RETRIES (10), so it is still retrying.
        let id = w
            .queue_json("no_such_event", "medium", json!({"x": 2}))
            .await;
        let mut q = w.spawn("q.log", &args(&["--queues", "medium"]));
        let started = Instant::now();
        while !w
            .log("q.log")
            .contains(&format!("Failed processing medium:{id} (attempt 2 of 11"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                w.log("q.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!has_dead(&w.dead().await, &id));
        stop(&mut q, "poller");
        assert_eq!(action_event::DEFAULT_RETRIES, 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_never_run_early_and_a_long_delay_does_not_hold_back_a_short_one() {
    let _heavy = HEAVY.lock().await;
    for backend in backends() {
        let w = World::new(&backend);
        let mut p = w.spawn("p.log", &["--queues", "medium", "--concurrency", "2"]);
        // Warm up: the poller is up and idle before the clock starts.
        w.queue_records(1, "medium", "warm", 0).await;
        w.wait_records(Duration::from_secs(60), "the poller to start", |r| {
            ended(r, "warm-0")
        });
        w.client().await.set_global();

        // (tag, earliest, latest) run times in ms since the epoch.
        let mut expect: Vec<(&str, u64, u64)> = Vec::new();
        let before = now_ms();
        queue!(record, tag = "d2000", delay = "2s")
            .await
            .expect("queue");
        expect.push(("d2000", before + 2000, now_ms() + 2000));
        let before = now_ms();
        queue!(record, tag = "d300", delay = "300ms")
            .await
            .expect("queue");
        expect.push(("d300", before + 300, now_ms() + 300));
        let before = now_ms();
        RecordEvent {
            tag: "typed_in".into(),
            sleep_ms: 0,
        }
        .queue_in(Duration::from_millis(700))
        .await
        .expect("queue");
        expect.push(("typed_in", before + 700, now_ms() + 700));
        let at_ms = now_ms() + 1500;
        let at = UNIX_EPOCH + Duration::from_millis(at_ms);
        queue!(record, tag = "at", at = at).await.expect("queue");
        expect.push(("at", at_ms, at_ms));
        let typed_at_ms = now_ms() + 1000;
        RecordEvent {
            tag: "typed_at".into(),
            sleep_ms: 0,
        }
        .queue_at(SystemTime::UNIX_EPOCH + Duration::from_millis(typed_at_ms))
        .await
        .expect("queue");
        expect.push(("typed_at", typed_at_ms, typed_at_ms));

        let records = w.wait_records(Duration::from_secs(60), "the delayed events", |r| {
            expect.iter().all(|(t, _, _)| ended(r, t))
        });
        stop(&mut p, "poller");
        let start_of = |tag: &str| {
            records
                .iter()
                .find(|r| r.what == "start" && r.tag == tag)
                .map(|r| r.ms)
                .expect("started")
        };
        for (tag, earliest, latest) in &expect {
            let start = start_of(tag);
            assert!(
                start >= *earliest,
                "{backend:?}: {tag} ran {}ms early",
                earliest - start
            );
            assert!(
                start <= latest + 1000,
                "{backend:?}: {tag} ran {}ms after its time (limit 1000ms)",
                start - latest
            );
            eprintln!(
                "{backend:?}: {tag} started {}..{}ms after its time",
                start.saturating_sub(*latest),
                start - earliest
            );
        }
        assert!(
            start_of("d300") < start_of("d2000"),
            "{backend:?}: the 2s delay queued first held back the 300ms one"
        );
        for (tag, _, _) in &expect {
            assert_eq!(of_tag(&records, tag).len(), 2, "{tag} ran once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_where_every_tenth_fails_once_all_complete() {
    let _heavy = HEAVY.lock().await;
    for backend in backends() {
        let w = World::new(&backend);
        let n = 10_000;
        let queued = Instant::now();
        let client = w.client().await;
        let mut set = tokio::task::JoinSet::new();
        for t in 0..8 {
            let client = client.clone();
            set.spawn(async move {
                for i in (t..n).step_by(8) {
                    let tag = format!("k-{i}");
                    let req = if i % 10 == 0 {
                        QueueRequest::foreign("flaky")
                            .param("tag", tag)
                            .param("fail_times", 1)
                    } else {
                        QueueRequest::new("record").param("tag", tag)
                    };
                    client.send(req.queue("medium")).await.expect("queue");
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("queueing task");
        }
        let queued = queued.elapsed();
        let started = Instant::now();
        let mut pollers: Vec<_> = (0..2)
            .map(|i| {
                w.spawn(
                    &format!("p{i}.log"),
                    &args(&["--queues", "medium", "--concurrency", "8"]),
                )
            })
            .collect();
        let check = Instant::now();
        let mut records;
        loop {
            records = w.records();
            if records.iter().filter(|r| r.what == "end").count() >= n {
                break;
            }
            assert!(
                check.elapsed() < Duration::from_secs(300),
                "{backend:?}: {} of {n} ended after 300s",
                records.iter().filter(|r| r.what == "end").count()
            );
            for (i, p) in pollers.iter_mut().enumerate() {
                assert!(
                    alive(p),
                    "poller {i} died:\n{}",
                    w.log(&format!("p{i}.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let took = started.elapsed();
        // Time for a wrong extra run to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, p) in pollers.iter_mut().enumerate() {
            stop(p, &format!("poller {i}"));
        }
        let records = w.records();
        let mut starts: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut ends: HashMap<&str, usize> = HashMap::new();
        for r in &records {
            match r.what.as_str() {
                "start" => starts.entry(&r.tag).or_default().push(r.attempt),
                "end" => *ends.entry(&r.tag).or_default() += 1,
                _ => {}
            }
        }
        for i in 0..n {
            let tag = format!("k-{i}");
            assert_eq!(ends.get(tag.as_str()), Some(&1), "{tag} must end once");
            let mut s = starts.get(tag.as_str()).cloned().unwrap_or_default();
            s.sort();
            if i % 10 == 0 {
                assert_eq!(s, [1, 2], "{tag} fails once, so runs exactly twice");
            } else {
                assert_eq!(s, [1], "{tag} runs exactly once");
            }
        }
        assert!(w.dead().await.is_empty());
        let pids: HashSet<u32> = records.iter().map(|r| r.pid).collect();
        eprintln!(
            "{backend:?}: 10,000 events (1,000 failing once) queued in {queued:.1?}, \
             processed in {took:.1?} by {} pollers x concurrency 8",
            pids.len()
        );
        assert!(
            took < Duration::from_secs(300),
            "{backend:?}: took {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_retries_are_in_flight_loses_nothing() {
    for backend in backends() {
        let w = World::new(&backend);
        let mut flaky = Vec::new();
        let mut gated = HashSet::new();
        for i in 0..100 {
            flaky.push(
                w.queue_json(
                    "flaky",
                    "medium",
                    json!({"tag": format!("f-{i}"), "fail_times": 2, "sleep_ms": 50}),
                )
                .await,
            );
        }
        for i in 0..20 {
            gated.insert(
                w.queue_json("gated", "medium", json!({"tag": format!("g-{i}")}))
                    .await
                    .to_string(),
            );
        }
        queue_side_work(&w, 50, "r").await;
        let poller_args = [
            "--queues",
            "medium",
            "--concurrency",
            "4",
            "--retry-base",
            "300ms",
        ];
        let mut a = w.spawn("a.log", &poller_args);
        w.wait_records(Duration::from_secs(60), "retries to be under way", |r| {
            r.iter()
                .filter(|r| r.what == "start" && r.attempt >= 2)
                .count()
                >= 30
        });
        send_signal(&a, SIGKILL);
        let _ = a.wait();
        let at_kill = w.records();
        // Attempts that started in `a` and neither failed nor ended: in hand at the kill.
        let in_hand = at_kill
            .iter()
            .filter(|s| {
                s.what == "start"
                    && s.pid == a.id()
                    && !at_kill
                        .iter()
                        .any(|r| r.tag == s.tag && r.attempt == s.attempt && r.what != "start")
            })
            .count();
        let done_at_kill = at_kill
            .iter()
            .filter(|r| r.what == "end" && r.tag.starts_with("f-"))
            .count();
        assert!(
            done_at_kill < 100,
            "{backend:?}: everything finished before the kill; the test proves nothing"
        );

        let mut b = w.spawn("b.log", &poller_args);
        w.wait_records(
            Duration::from_secs(120),
            "every flaky and record event",
            |r| all_ended(r, 100, "f") && all_ended(r, 50, "r"),
        );
        let dead = w
            .wait_dead(Duration::from_secs(120), "every gated event to die", |d| {
                d.len() >= gated.len()
            })
            .await;
        stop(&mut b, "poller b");

        // Every event completed (at least once) or is a dead letter.
        let dead_ids: HashSet<String> = dead.iter().map(|d| d.id.clone()).collect();
        assert_eq!(
            dead_ids, gated,
            "{backend:?}: exactly the gated events died"
        );
        for d in &dead {
            assert_eq!(d.attempts, 3, "{d:#?}");
        }
        let records = w.records();
        let ended_ids: HashSet<&str> = records
            .iter()
            .filter(|r| r.what == "end")
            .map(|r| r.id.as_str())
            .collect();
        for id in &flaky {
            assert!(ended_ids.contains(id.to_string().as_str()), "{id} lost");
        }
        let client = w.client().await;
        let depth = client.broker().depth("medium").await.expect("depth");
        assert_eq!(depth.waiting, 0, "{backend:?}: nothing left behind");
        let runs_again = records
            .iter()
            .filter(|r| r.what == "end" && r.tag.starts_with("f-"))
            .count()
            - 100;
        eprintln!(
            "{backend:?}: {done_at_kill} of 100 flaky events done at the kill, \
             {in_hand} attempt(s) in hand; {runs_again} ran to the end twice (at least once)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_longer_than_the_lease_runs_once() {
    for backend in backends() {
        // The test worlds lease SQLite events for 2s; the heartbeat keeps them.
        let w = World::new(&backend);
        w.queue_records(1, "medium", "long", 5000).await;
        let mut a = w.spawn("a.log", &["--queues", "medium"]);
        w.wait_records(Duration::from_secs(60), "the long event to start", |r| {
            r.iter().any(|r| r.tag == "long-0")
        });
        let mut b = w.spawn("b.log", &["--queues", "medium"]);
        w.wait_records(Duration::from_secs(60), "the long event to end", |r| {
            ended(r, "long-0")
        });
        // Past another lease, for a wrong second run to show up.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop(&mut a, "poller a");
        stop(&mut b, "poller b");
        let long: Vec<_> = of_tag(&w.records(), "long-0")
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(long.len(), 2, "{backend:?}: one start, one end: {long:?}");
        assert_eq!(long[0].pid, a.id());
    }
}
