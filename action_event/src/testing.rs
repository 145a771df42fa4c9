//! Test helpers for apps: `queue!` without a broker, like Sidekiq's
//! `fake!` / `inline!` and Dramatiq's stub broker.
//!
//! - [`fake()`]: `queue!` (and [`Client::send`](crate::Client::send),
//!   [`QueueExt`](crate::QueueExt), `cx.queue(...)`) records the event
//!   instead of publishing it. Assert what was queued, by name and params,
//!   then [`Fake::drain`] runs the recorded events through the real
//!   handlers and filters ([`Registry::dispatch`](crate::Registry::dispatch)).
//! - [`inline()`]: `queue!` runs the event in place, through the same
//!   dispatch, and returns once it ran. An `Err`, a panic, a timeout or an
//!   unknown name comes back to the caller as [`Error::Inline`].
//!
//! ```rust,standalone_crate
//! use action_event::prelude::*;
//! use action_event::{Outcome, testing};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[action_event(queue = "high")]
//! pub struct WelcomeEvent { pub user_id: u64 }
//!
//! impl Process for WelcomeEvent {
//!     async fn process(self, _cx: &Context) -> Result<()> { Ok(()) }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // #[tokio::test] async fn signup_queues_a_welcome() {
//! let fake = testing::fake();
//! queue!(welcome, user_id = 7).await.unwrap();          // recorded, not published
//! fake.assert_queued("welcome", serde_json::json!({"user_id": 7}));
//! assert_eq!(fake.queued()[0].queue, "high");
//! let ran = fake.drain().await;                          // the real handler runs
//! assert_eq!(ran[0].outcome, Outcome::Completed);
//! assert!(fake.is_empty());
//! // }
//! # });
//! ```
//!
//! ## Isolation, and what may not escape
//!
//! Rust runs tests in parallel threads of one process, so a mode is never
//! process-wide. [`fake()`] and [`inline()`] return a guard that installs
//! the mode as the current client (see [`Client`](crate::Client)) **for
//! the current thread** until it is dropped (the previous one, if any,
//! comes back: guards nest). A `#[tokio::test]` runs its body, and on its
//! default current-thread runtime every task it spawns, on the test's own
//! thread, so the mode holds across every `.await` of the test and in its
//! spawned tasks, and tests running beside it are not affected.
//!
//! A thread-local cannot follow a task that a multi-threaded runtime moves
//! to a worker thread. For that, [`Fake::scope`] / [`Inline::scope`] wrap a
//! future so that it carries the mode with it (the task-local slot of the
//! current client): `tokio::spawn(fake.scope(async { ... }))`.
//!
//! The rule that keeps a test's events in the test: **while a fake or
//! inline guard is alive anywhere in the process, a `queue!` that finds no
//! mode and no installed client fails** with
//! [`Error::OutsideTestMode`], whose message
//! names `fake.scope(..)`, instead of falling through to the global client
//! (which would create `action_event.db`, or reach `ACTION_EVENT_URL`'s
//! broker). That catches a task spawned onto a worker thread without
//! `scope`, `spawn_blocking`, and threads of its own. A test that uses a
//! real broker on purpose, beside tests with fakes in the same binary,
//! queues through an explicit [`Client`](crate::Client): `client.send(req)`
//! or `client.scope(fut)`; those never fail for this rule (but on a thread
//! or task with a mode, `client.send` records or runs the event too).
//!
//! Names follow the same rules as everywhere (see
//! [`QueueRequest`](crate::QueueRequest)): a `queue!` of a name the test
//! binary does not know fails in a test as it would in production.
//!
//! The guards are not `Send`: a guard dropped on another thread would
//! restore that thread's mode. Drop them in reverse order of creation (the
//! end of a scope does).

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;

use crate::Error;
use crate::client::{self, Current, LocalQueue};
use crate::dispatch::{Failure, FailureKind, Outcome};
use crate::envelope::{Envelope, EventId};
use crate::event::{Event, State};
use crate::registry::{BoxFuture, registry};

/// How many events one [`Fake::drain`] runs before it decides that events
/// queue each other forever.
pub const DRAIN_LIMIT: usize = 10_000;

/// One event that ran in a test: what was queued and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ran {
    /// The event as queued.
    pub envelope: Envelope,
    /// How its run ended.
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fake,
    Inline,
}

struct Inner {
    queued: VecDeque<Envelope>,
    ran: Vec<Ran>,
    state: Arc<State>,
}

#[derive(Clone)]
pub(crate) struct Mode {
    kind: Kind,
    inner: Arc<Mutex<Inner>>,
}

impl Mode {
    fn new(kind: Kind) -> Mode {
        Mode {
            kind,
            inner: Arc::new(Mutex::new(Inner {
                queued: VecDeque::new(),
                ran: Vec::new(),
                state: Arc::new(State::new()),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding it must not hide its own panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This mode as the current client.
    fn current(&self) -> Current {
        Current::Local(Arc::new(self.clone()))
    }

    /// Installs it for this thread (and counts it as active in the
    /// process); returns what was installed before.
    fn install(&self) -> Option<Current> {
        client::count_local_mode(true);
        client::replace_thread_current(Some(self.current()))
    }

    /// What `queue!` does in this mode, with an envelope already checked.
    async fn send(&self, envelope: Envelope) -> Result<EventId, Error> {
        let id = envelope.id;
        match self.kind {
            Kind::Fake => {
                self.lock().queued.push_back(envelope);
                Ok(id)
            }
            Kind::Inline => {
                let outcome = self.run(&envelope).await;
                let failed = match &outcome {
                    Outcome::Failed(f) => Some(f.message.clone()),
                    _ => None,
                };
                self.lock().ran.push(Ran {
                    envelope: envelope.clone(),
                    outcome,
                });
                match failed {
                    None => Ok(id),
                    Some(message) => Err(Error::Inline {
                        event: envelope.name,
                        message,
                    }),
                }
            }
        }
    }

    /// Runs one event with this mode as its current client, so that what
    /// its handler queues stays in the mode wherever the run is awaited.
    async fn run(&self, envelope: &Envelope) -> Outcome {
        let state = self.lock().state.clone();
        match registry() {
            // Boxed: an event run in place may queue (and so run) another.
            Ok(r) => {
                let run = client::scope_current(self.current(), r.dispatch(envelope, state));
                Box::pin(run).await
            }
            Err(e) => Outcome::Failed(Failure {
                kind: FailureKind::UnknownEvent,
                message: e.to_string(),
            }),
        }
    }
}

impl LocalQueue for Mode {
    fn send(&self, envelope: Envelope) -> BoxFuture<'_, Result<EventId, Error>> {
        Box::pin(Mode::send(self, envelope))
    }
}

/// Ends a mode installed by [`Mode::install`]: the previous one comes back.
fn uninstall(prev: Option<Current>) {
    client::replace_thread_current(prev);
    client::count_local_mode(false);
}

/// Records events instead of publishing them, on this thread until dropped.
/// See the [module docs](self) for isolation.
///
/// ```rust,standalone_crate
/// # use action_event::prelude::*;
/// # #[derive(Serialize, Deserialize)] #[action_event] pub struct PingEvent { pub n: u32 }
/// # impl Process for PingEvent { async fn process(self, _: &Context) -> Result<()> { Ok(()) } }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let fake = action_event::testing::fake();
/// action_event::queue!(ping, n = 1).await.unwrap();
/// assert_eq!(fake.queued_named("ping").len(), 1);
/// # });
/// ```
pub fn fake() -> Fake {
    let mode = Mode::new(Kind::Fake);
    let prev = mode.install();
    Fake {
        mode,
        prev,
        _not_send: PhantomData,
    }
}

/// Runs every queued event in place, on this thread until dropped. See the
/// [module docs](self) for isolation.
///
/// ```rust,standalone_crate
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let _inline = action_event::testing::inline();
/// // A name this binary does not know fails at the call, as in production.
/// let err = action_event::queue!(no_such_event).await.unwrap_err();
/// assert!(err.to_string().contains("unknown event `no_such_event`"), "{err}");
/// // Another service's event: it runs here, and no handler knows it.
/// let err = action_event::QueueRequest::foreign("no_such_event").queue("low").send().await.unwrap_err();
/// assert!(matches!(err, action_event::Error::Inline { .. }), "{err}");
/// # });
/// ```
pub fn inline() -> Inline {
    let mode = Mode::new(Kind::Inline);
    let prev = mode.install();
    Inline {
        mode,
        prev,
        _not_send: PhantomData,
    }
}

/// The guard of [`fake()`]: the events queued while it lives, and a way to
/// run them.
#[must_use = "the fake mode ends when this guard is dropped: `let fake = testing::fake();`"]
pub struct Fake {
    mode: Mode,
    prev: Option<Current>,
    _not_send: PhantomData<*const ()>,
}

impl Fake {
    /// The app's environment that [`Fake::drain`] hands the handlers
    /// (`cx.state::<T>()`); empty by default.
    ///
    /// ```
    /// let fake = action_event::testing::fake().with_state(action_event::State::new().with(5u8));
    /// # drop(fake);
    /// ```
    pub fn with_state(self, state: State) -> Self {
        self.mode.lock().state = Arc::new(state);
        self
    }

    /// Every event queued and not yet drained, oldest first.
    ///
    /// ```rust,standalone_crate
    /// # use action_event::prelude::*;
    /// # #[derive(Serialize, Deserialize)] #[action_event] pub struct PingEvent { pub n: u32 }
    /// # impl Process for PingEvent { async fn process(self, _: &Context) -> Result<()> { Ok(()) } }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let fake = action_event::testing::fake();
    /// action_event::queue!(ping, n = 1, queue = low).await.unwrap();
    /// let q = fake.queued();
    /// assert_eq!((q[0].name.as_str(), q[0].queue.as_str()), ("ping", "low"));
    /// assert_eq!(q[0].params["n"], 1);
    /// # });
    /// ```
    pub fn queued(&self) -> Vec<Envelope> {
        self.mode.lock().queued.iter().cloned().collect()
    }

    /// The queued events named `name`, oldest first.
    pub fn queued_named(&self, name: &str) -> Vec<Envelope> {
        self.mode
            .lock()
            .queued
            .iter()
            .filter(|e| e.name == name)
            .cloned()
            .collect()
    }

    /// The queued events of type `E`, decoded from their params.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Debug, Serialize, Deserialize)]
    /// #[action_event]
    /// pub struct ResizeEvent { pub width: u32 }
    /// impl Process for ResizeEvent { async fn process(self, _: &Context) -> Result<()> { Ok(()) } }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let fake = action_event::testing::fake();
    /// ResizeEvent { width: 640 }.queue().await.unwrap();
    /// let events: Vec<ResizeEvent> = fake.queued_events();
    /// assert_eq!(events[0].width, 640);
    /// # });
    /// ```
    pub fn queued_events<E: Event + DeserializeOwned>(&self) -> Vec<E> {
        self.queued_named(E::NAME)
            .into_iter()
            .map(|e| {
                serde_json::from_value(e.params.clone()).unwrap_or_else(|err| {
                    panic!("queued `{}` does not decode: {err}: {}", E::NAME, e.params)
                })
            })
            .collect()
    }

    /// How many events are queued.
    pub fn len(&self) -> usize {
        self.mode.lock().queued.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every queued event.
    pub fn clear(&self) {
        self.mode.lock().queued.clear();
    }

    /// Panics, listing what was queued, unless an event named `name` was
    /// queued whose params hold every key of `params` with that value
    /// (other keys may be there too; `json!({})` matches any params).
    ///
    /// ```rust,standalone_crate,should_panic
    /// # use action_event::prelude::*;
    /// # #[derive(Serialize, Deserialize)] #[action_event] pub struct PingEvent { pub n: u32 }
    /// # impl Process for PingEvent { async fn process(self, _: &Context) -> Result<()> { Ok(()) } }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let fake = action_event::testing::fake();
    /// action_event::queue!(ping, n = 1, extra = true).await.unwrap();
    /// fake.assert_queued("ping", serde_json::json!({"n": 1}));   // passes
    /// fake.assert_queued("ping", serde_json::json!({"n": 2}));   // panics
    /// # });
    /// ```
    pub fn assert_queued(&self, name: &str, params: serde_json::Value) {
        let queued = self.queued();
        let found = queued
            .iter()
            .any(|e| e.name == name && params_match(&e.params, &params));
        if !found {
            let list: Vec<String> = queued
                .iter()
                .map(|e| format!("  {} on {}: {}", e.name, e.queue, e.params_json()))
                .collect();
            panic!(
                "no event `{name}` with params {params} was queued; queued:\n{}",
                if list.is_empty() {
                    "  (nothing)".to_string()
                } else {
                    list.join("\n")
                }
            );
        }
    }

    /// Panics unless nothing named `name` was queued.
    pub fn assert_not_queued(&self, name: &str) {
        let n = self.queued_named(name).len();
        assert!(n == 0, "expected no `{name}` queued, found {n}");
    }

    /// Runs the queued events, oldest first, through the real filters and
    /// handlers ([`Registry::dispatch`](crate::Registry::dispatch)), in
    /// this task, until none is left: events they queue are run too. A
    /// delay is not waited for; a failure is reported, not retried.
    /// Panics past [`DRAIN_LIMIT`] runs.
    pub async fn drain(&self) -> Vec<Ran> {
        let mut ran = Vec::new();
        loop {
            let next = self.mode.lock().queued.pop_front();
            let Some(envelope) = next else {
                return ran;
            };
            assert!(
                ran.len() < DRAIN_LIMIT,
                "drain ran {DRAIN_LIMIT} events and more keep coming: does an event queue itself?"
            );
            let outcome = self.mode.run(&envelope).await;
            ran.push(Ran { envelope, outcome });
        }
    }

    /// `fut` with this fake mode attached, wherever it runs: for futures
    /// handed to `tokio::spawn` on a multi-threaded runtime.
    ///
    /// ```rust,standalone_crate
    /// # use action_event::prelude::*;
    /// # #[derive(Serialize, Deserialize)] #[action_event] pub struct PingEvent { pub n: u32 }
    /// # impl Process for PingEvent { async fn process(self, _: &Context) -> Result<()> { Ok(()) } }
    /// # tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(async {
    /// let fake = action_event::testing::fake();
    /// tokio::spawn(fake.scope(async { action_event::queue!(ping, n = 2).await.unwrap(); }))
    ///     .await
    ///     .unwrap();
    /// assert_eq!(fake.len(), 1);
    /// // Without `scope`, the worker thread has no mode: the `queue!` fails
    /// // rather than reach a real broker.
    /// let err = tokio::spawn(async { action_event::queue!(ping, n = 3).await })
    ///     .await
    ///     .unwrap()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("fake.scope"), "{err}");
    /// # });
    /// ```
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        client::scope_current(self.mode.current(), fut)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        uninstall(self.prev.take());
    }
}

/// The guard of [`inline()`]: what ran while it lives.
#[must_use = "the inline mode ends when this guard is dropped: `let inline = testing::inline();`"]
pub struct Inline {
    mode: Mode,
    prev: Option<Current>,
    _not_send: PhantomData<*const ()>,
}

impl Inline {
    /// The app's environment handed to the handlers; empty by default.
    ///
    /// ```
    /// let inline = action_event::testing::inline().with_state(action_event::State::new().with(5u8));
    /// # drop(inline);
    /// ```
    pub fn with_state(self, state: State) -> Self {
        self.mode.lock().state = Arc::new(state);
        self
    }

    /// Every event run so far, with outcomes, in the order they finished
    /// (an event that queued others finishes after them).
    ///
    /// ```rust,standalone_crate
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let inline = action_event::testing::inline();
    /// let _ = action_event::QueueRequest::foreign("elsewhere").queue("low").send().await;
    /// assert_eq!(inline.ran()[0].envelope.name, "elsewhere");
    /// # });
    /// ```
    pub fn ran(&self) -> Vec<Ran> {
        self.mode.lock().ran.clone()
    }

    /// `fut` with this inline mode attached, wherever it runs (see [`Fake::scope`]).
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        client::scope_current(self.mode.current(), fut)
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        uninstall(self.prev.take());
    }
}

/// Whether `actual` holds every key of `expected` with an equal value.
fn params_match(actual: &serde_json::Value, expected: &serde_json::Value) -> bool {
    match (actual, expected) {
        (serde_json::Value::Object(a), serde_json::Value::Object(e)) => {
            e.iter().all(|(k, v)| a.get(k) == Some(v))
        }
        _ => actual == expected,
    }
}
