//! How an app tests its events without a broker: `action_event::testing`.
//!
//! `testing::fake()` records what `queue!` queues; `fake.drain()` then runs
//! it through the real filters and handlers. `testing::inline()` runs each
//! event where it is queued and hands its failure back to the caller. Both
//! modes hold for the test's own thread until the guard is dropped, so
//! tests running in parallel do not see each other's events.

use action_event::prelude::*;
use action_event::{Outcome, testing};
use demo::AppConfig;
use demo::events::{ApplicationEvent, HelloWorldEvent};
use serde_json::json;

/// An event of this test only: it fails the way a buggy handler would.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(extends = ApplicationEvent)]
struct ExplodeEvent {
    how: String,
}

impl Process for ExplodeEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        match self.how.as_str() {
            "panic" => panic!("exploded on purpose"),
            _ => action_event::anyhow::bail!("failed on purpose"),
        }
    }
}

/// An event that queues a follow-up, as handlers do.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(extends = ApplicationEvent)]
struct GreetAllEvent {
    names: Vec<String>,
}

impl Process for GreetAllEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        for name in self.names {
            cx.queue_event(&HelloWorldEvent { name }).await?;
        }
        Ok(())
    }
}

fn state() -> State {
    State::new().with(AppConfig {
        greeting: "hi".into(),
    })
}

#[tokio::test]
async fn fake_records_hello_world_then_drains_it_through_the_real_handler() {
    let fake = testing::fake().with_state(state());

    queue!(hello_world, name = "world").await.expect("queue!");
    HelloWorldEvent {
        name: "typed".into(),
    }
    .queue()
    .await
    .expect("typed queue");

    // Nothing ran yet: both are recorded, by name and params.
    assert_eq!(fake.len(), 2);
    fake.assert_queued("hello_world", json!({"name": "world"}));
    fake.assert_not_queued("explode");
    let queued = fake.queued();
    assert_eq!(queued[0].queue, "high", "the handler's queue");
    let typed: Vec<HelloWorldEvent> = fake.queued_events();
    assert_eq!(typed[1].name, "typed");

    // Draining runs them through ApplicationEvent's filter and the handler.
    let ran = fake.drain().await;
    assert_eq!(ran.len(), 2);
    assert!(
        ran.iter().all(|r| r.outcome == Outcome::Completed),
        "{ran:?}"
    );
    assert!(fake.is_empty());
}

#[tokio::test]
async fn fake_drain_runs_what_handlers_queue_and_reports_failures() {
    let fake = testing::fake().with_state(state());
    queue!(greet_all, names = ["ann", "bob"])
        .await
        .expect("queue!");
    queue!(explode, how = "error").await.expect("queue!");

    let ran = fake.drain().await;
    let names: Vec<&str> = ran.iter().map(|r| r.envelope.name.as_str()).collect();
    assert_eq!(
        names,
        ["greet_all", "explode", "hello_world", "hello_world"]
    );
    assert_eq!(ran[2].envelope.params, json!({"name": "ann"}));
    match &ran[1].outcome {
        Outcome::Failed(f) => assert!(f.message.contains("failed on purpose"), "{f:?}"),
        other => panic!("explode must fail, got {other:?}"),
    }
}

#[tokio::test]
async fn fake_checks_params_against_the_event_struct() {
    let _fake = testing::fake();
    let err = queue!(hello_world, name = 5).await.unwrap_err().to_string();
    assert!(
        err.contains("event `hello_world`") && err.contains("name"),
        "{err}"
    );
}

#[tokio::test]
async fn inline_runs_hello_world_where_it_is_queued() {
    let inline = testing::inline().with_state(state());
    let id = queue!(hello_world, name = "world").await.expect("runs");
    let ran = inline.ran();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].envelope.id, id);
    assert_eq!(ran[0].outcome, Outcome::Completed);

    // Follow-ups run in place too, before `queue!` returns.
    queue!(greet_all, names = ["ann"]).await.expect("runs");
    assert_eq!(inline.ran().len(), 3);
}

#[tokio::test]
async fn inline_hands_an_error_or_a_panic_back_to_the_caller() {
    let _inline = testing::inline();
    let err = queue!(explode, how = "error")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("event `explode`") && err.contains("failed on purpose"),
        "{err}"
    );
    let err = queue!(explode, how = "panic")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("panicked") && err.contains("exploded on purpose"),
        "{err}"
    );
}

#[tokio::test]
async fn modes_nest_and_end_with_their_guard() {
    let outer = testing::fake();
    {
        let _inline = testing::inline();
        queue!(hello_world, name = "inner")
            .await
            .expect("runs inline");
    }
    queue!(hello_world, name = "outer").await.expect("recorded");
    assert_eq!(
        outer.len(),
        1,
        "the inline run was not recorded by the fake"
    );
    outer.assert_queued("hello_world", json!({"name": "outer"}));
}

/// Many tests at once, each in its own thread with its own fake: none sees
/// another's events.
#[test]
fn parallel_tests_do_not_share_a_mode() {
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async move {
                        let fake = testing::fake();
                        for j in 0..20 {
                            queue!(hello_world, name = format!("{i}-{j}"))
                                .await
                                .expect("queue!");
                            tokio::task::yield_now().await;
                        }
                        let names: Vec<String> = fake
                            .queued_events::<HelloWorldEvent>()
                            .into_iter()
                            .map(|e| e.name)
                            .collect();
                        assert_eq!(names.len(), 20);
                        assert!(names.iter().all(|n| n.starts_with(&format!("{i}-"))));
                    })
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

/// A multi-threaded runtime moves spawned tasks between threads: `scope`
/// carries the mode with the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_carries_the_mode_into_spawned_tasks() {
    let fake = testing::fake();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(fake.scope(async move {
                tokio::task::yield_now().await;
                queue!(hello_world, name = format!("task-{i}")).await
            }))
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("queue!");
    }
    assert_eq!(fake.len(), 4);
}
