//! Filter chains through `extends`: order, skips, moves, settings, halting,
//! data from filters to the handler, and the app's state.
//!
//! Three levels: `RootEvent` (base) <- `MidEvent` (base) <- `LeafEvent`.
//! Every filter pushes its name into the shared `Log`, so the order they ran
//! in is checked exactly, through `Registry::dispatch`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use action_event::prelude::*;
use action_event::{Envelope, FailureKind, Outcome, Registry};
use serde_json::json;

/// What ran, in order.
#[derive(Default)]
struct Log(Mutex<Vec<&'static str>>);

impl Log {
    fn push(cx: &Context, what: &'static str) -> Result<()> {
        cx.state::<Log>()?.0.lock().unwrap().push(what);
        Ok(())
    }
}

async fn root_a(cx: &mut Context) -> Result<Flow> {
    Log::push(cx, "root_a")?;
    Ok(Flow::Continue)
}
async fn root_b(cx: &mut Context) -> Result<Flow> {
    Log::push(cx, "root_b")?;
    Ok(Flow::Continue)
}
async fn root_c(cx: &mut Context) -> Result<Flow> {
    Log::push(cx, "root_c")?;
    Ok(Flow::Continue)
}
async fn mid_a(cx: &mut Context) -> Result<Flow> {
    Log::push(cx, "mid_a")?;
    Ok(Flow::Continue)
}
mod leaf_filters {
    use action_event::prelude::*;

    pub async fn leaf_a(cx: &mut Context) -> Result<Flow> {
        super::Log::push(cx, "leaf_a")?;
        Ok(Flow::Continue)
    }
}

#[action_event(base, queue = "low", retries = 5, timeout = "10s")]
#[before_filter(root_a, root_b, root_c)]
pub struct RootEvent;

/// Skips `root_b`; adds `mid_a`; adds `root_a` again, which moves it last.
#[action_event(base, extends = RootEvent, retries = 2)]
#[skip_before_filter(root_b)]
#[before_filter(mid_a, root_a)]
pub struct MidEvent;

/// Skips `mid_a`, adds its own; overrides queue and timeout.
#[derive(Serialize, Deserialize)]
#[action_event(extends = MidEvent, queue = "high", timeout = "2s")]
#[skip_before_filter(mid_a)]
#[before_filter(leaf_filters::leaf_a)]
pub struct LeafEvent {
    pub n: u32,
}

impl Process for LeafEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        Log::push(cx, "process")?;
        anyhow::ensure!(self.n == 7, "n is {}", self.n);
        Ok(())
    }
}

/// Extends the mid base and overrides nothing.
#[derive(Serialize, Deserialize)]
#[action_event(extends = MidEvent)]
pub struct PlainEvent {}

impl Process for PlainEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        Log::push(cx, "plain")
    }
}

/// No base at all: the defaults.
#[derive(Serialize, Deserialize)]
#[action_event]
pub struct LoneEvent {}

impl Process for LoneEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        Log::push(cx, "lone")
    }
}

fn registry() -> &'static Registry {
    action_event::registry().expect("the events of this file are consistent")
}

/// Runs `name` with `params` and a fresh `Log`; returns the outcome and the log.
async fn run(name: &str, params: serde_json::Value) -> (Outcome, Vec<&'static str>) {
    let state = Arc::new(State::new().with(Log::default()));
    let env = Envelope::new(name, "whatever", params);
    let outcome = registry().dispatch(&env, state.clone()).await;
    let log = state.get::<Log>().unwrap().0.lock().unwrap().clone();
    (outcome, log)
}

#[tokio::test]
async fn three_levels_run_in_chain_order() {
    let (outcome, log) = run("leaf", json!({"n": 7})).await;
    assert_eq!(outcome, Outcome::Completed);
    assert_eq!(log, ["root_c", "root_a", "leaf_a", "process"]);
}

#[tokio::test]
async fn a_level_that_overrides_nothing_inherits_the_chain() {
    let (outcome, log) = run("plain", json!({})).await;
    assert_eq!(outcome, Outcome::Completed);
    // `root_a` added again by the mid base runs after `mid_a`, once.
    assert_eq!(log, ["root_c", "mid_a", "root_a", "plain"]);
}

#[tokio::test]
async fn an_event_without_base_has_no_filters() {
    let (outcome, log) = run("lone", json!({})).await;
    assert_eq!(outcome, Outcome::Completed);
    assert_eq!(log, ["lone"]);
}

#[test]
fn settings_resolve_nearest_first() {
    let leaf = registry().get("leaf").unwrap();
    assert_eq!(leaf.queue, "high"); // its own
    assert_eq!(leaf.retries, 2); // the mid base's
    assert_eq!(leaf.timeout, Some(Duration::from_secs(2))); // its own

    let plain = registry().get("plain").unwrap();
    assert_eq!(plain.queue, "low"); // the root's
    assert_eq!(plain.retries, 2); // the mid base's
    assert_eq!(plain.timeout, Some(Duration::from_secs(10))); // the root's

    let lone = registry().get("lone").unwrap();
    assert_eq!(lone.queue, action_event::DEFAULT_QUEUE);
    assert_eq!(lone.queue, "medium");
    assert_eq!(lone.retries, action_event::DEFAULT_RETRIES);
    assert_eq!(lone.timeout, None);
}

#[test]
fn event_info_lists_the_chain_and_ancestors() {
    let leaf = registry().get("leaf").unwrap();
    let paths: Vec<&str> = leaf.chain.iter().map(|f| f.path).collect();
    assert_eq!(paths, ["root_c", "root_a", "leaf_filters::leaf_a"]);
    let ids: Vec<&str> = leaf.chain.iter().map(|f| f.id).collect();
    assert_eq!(
        ids,
        [
            "api::chain::root_c",
            "api::chain::root_a",
            "api::chain::leaf_filters::leaf_a"
        ]
    );
    assert_eq!(
        leaf.ancestors,
        ["api::chain::MidEvent", "api::chain::RootEvent"]
    );
    assert_eq!(leaf.type_name, "api::chain::LeafEvent");
    assert!(leaf.is::<LeafEvent>());
    assert_eq!(registry().get_type::<LeafEvent>().unwrap().name, "leaf");

    let plain = registry().get("plain").unwrap();
    let paths: Vec<&str> = plain.chain.iter().map(|f| f.path).collect();
    assert_eq!(paths, ["root_c", "mid_a", "root_a"]);

    // Bases are not events.
    assert!(registry().get("root").is_none());
    assert!(registry().get("mid").is_none());
    assert!(registry().get_type::<MidEvent>().is_none());

    let table = registry().describe();
    assert!(
        table.contains("leaf (api::chain::LeafEvent) queue=high retries=2 timeout=2s chain=[root_c, root_a, leaf_filters::leaf_a]"),
        "{table}"
    );
}

// --- Halting -------------------------------------------------------------

async fn before_gate(cx: &mut Context) -> Result<Flow> {
    Log::push(cx, "before_gate")?;
    Ok(Flow::Continue)
}
async fn gate(cx: &mut Context) -> Result<Flow> {
    Log::push(cx, "gate")?;
    let closed: bool = cx.param("closed")?;
    Ok(if closed { Flow::Halt } else { Flow::Continue })
}
async fn after_gate(cx: &mut Context) -> Result<Flow> {
    Log::push(cx, "after_gate")?;
    Ok(Flow::Continue)
}

#[derive(Serialize, Deserialize)]
#[action_event]
#[before_filter(before_gate, gate, after_gate)]
pub struct GuardedEvent {
    pub closed: bool,
}

impl Process for GuardedEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        Log::push(cx, "guarded")
    }
}

#[tokio::test]
async fn halt_stops_the_chain_and_process_never_runs() {
    let (outcome, log) = run("guarded", json!({"closed": true})).await;
    assert_eq!(outcome, Outcome::Halted { filter: "gate" });
    assert_eq!(log, ["before_gate", "gate"]);

    let (outcome, log) = run("guarded", json!({"closed": false})).await;
    assert_eq!(outcome, Outcome::Completed);
    assert_eq!(log, ["before_gate", "gate", "after_gate", "guarded"]);
}

// --- Data from filters to the handler, and the app's state ---------------

/// The app's environment.
struct Db {
    users: Vec<(u64, &'static str)>,
}

/// What `load_user` hands to the handler.
struct User {
    name: &'static str,
}

/// Where the handler reports what it saw.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

async fn load_user(cx: &mut Context) -> Result<Flow> {
    let id: u64 = cx.param("user_id")?;
    let db = cx.state::<Db>()?;
    let name = db
        .users
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, n)| *n)
        .ok_or_else(|| anyhow::anyhow!("no user {id}"))?;
    cx.insert(User { name });
    Ok(Flow::Continue)
}

async fn shout(cx: &mut Context) -> Result<Flow> {
    if let Some(user) = cx.get_mut::<User>() {
        user.name = if user.name == "ada" { "ADA" } else { user.name };
    }
    Ok(Flow::Continue)
}

#[derive(Serialize, Deserialize)]
#[action_event]
#[before_filter(load_user, shout)]
pub struct WelcomeEvent {
    pub user_id: u64,
}

impl Process for WelcomeEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let user = cx
            .get::<User>()
            .ok_or_else(|| anyhow::anyhow!("no user loaded"))?;
        cx.state::<Seen>()?
            .0
            .lock()
            .unwrap()
            .push(format!("{} {}", self.user_id, user.name));
        Ok(())
    }
}

#[tokio::test]
async fn filters_hand_data_to_the_handler_and_reach_the_state() {
    let state = Arc::new(
        State::new()
            .with(Db {
                users: vec![(1, "ada"), (2, "grace")],
            })
            .with(Seen::default()),
    );
    let env = Envelope::new("welcome", "medium", json!({"user_id": 1}));
    assert_eq!(
        registry().dispatch(&env, state.clone()).await,
        Outcome::Completed
    );
    let env = Envelope::new("welcome", "medium", json!({"user_id": 2}));
    assert_eq!(
        registry().dispatch(&env, state.clone()).await,
        Outcome::Completed
    );
    let seen = state.get::<Seen>().unwrap().0.lock().unwrap().clone();
    assert_eq!(seen, ["1 ADA", "2 grace"]);
}

#[tokio::test]
async fn missing_state_names_the_type() {
    // No `Db` in the state.
    let state = Arc::new(State::new().with(Seen::default()));
    let env = Envelope::new("welcome", "medium", json!({"user_id": 1}));
    let Outcome::Failed(failure) = registry().dispatch(&env, state).await else {
        panic!("expected a failure");
    };
    assert_eq!(failure.kind, FailureKind::Error);
    assert!(
        failure
            .message
            .contains("state `api::chain::Db` was not provided"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("before_filter `load_user`"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.starts_with("event `welcome`"),
        "{}",
        failure.message
    );
}

#[test]
fn missing_state_outside_dispatch_names_the_type() {
    let cx = Context::for_test("welcome", json!({}));
    let err = cx.state::<Db>().err().expect("no Db was given").to_string();
    assert!(err.contains("`api::chain::Db`"), "{err}");
}
