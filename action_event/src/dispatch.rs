//! Running one envelope: decode the params, run the before filters, then
//! `process`, within the event's timeout, with panics caught; the result is
//! an [`Outcome`].
//!
//! Nothing here knows where the envelope came from or where follow-up
//! events go: a `queue!` inside a handler reaches the *current* client
//! (see [`crate::Client::scope`]), which the poller (or a test mode)
//! installs around this call.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;

use crate::Error;
use crate::envelope::Envelope;
use crate::event::{Context, Flow, State};
use crate::registry::Registry;

/// How one run of an event ended.
///
/// ```rust,standalone_crate
/// use action_event::prelude::*;
/// use action_event::{Envelope, Outcome};
/// async fn closed(_: &mut Context) -> Result<Flow> { Ok(Flow::Halt) }
/// #[derive(Serialize, Deserialize)]
/// #[action_event]
/// #[before_filter(closed)]
/// pub struct ShopEvent {}
/// impl Process for ShopEvent {
///     async fn process(self, _: &Context) -> Result<()> { unreachable!() }
/// }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let env = Envelope::new("shop", "medium", serde_json::json!({}));
/// let outcome = action_event::registry().unwrap().dispatch(&env, State::new().into()).await;
/// assert_eq!(outcome, Outcome::Halted { filter: "closed" });
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The chain and `process` returned Ok.
    Completed,
    /// A filter returned [`Flow::Halt`]: handled, not run, not failed.
    Halted {
        /// The filter that halted, as written.
        filter: &'static str,
    },
    /// It failed; see [`Failure`].
    Failed(Failure),
}

/// Why a run failed, and what should become of the event.
///
/// ```rust,standalone_crate
/// use action_event::prelude::*;
/// use action_event::{Envelope, FailureKind, Outcome};
/// #[derive(Serialize, Deserialize)]
/// #[action_event]
/// pub struct ChargeEvent { pub amount: i64 }
/// impl Process for ChargeEvent {
///     async fn process(self, _: &Context) -> Result<()> {
///         anyhow::ensure!(self.amount > 0, "amount must be positive");
///         Ok(())
///     }
/// }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let env = Envelope::new("charge", "medium", serde_json::json!({"amount": -1}));
/// let Outcome::Failed(failure) = action_event::registry().unwrap().dispatch(&env, State::new().into()).await
/// else { panic!() };
/// assert_eq!(failure.kind, FailureKind::Error);
/// assert_eq!(failure.message, "event `charge`: amount must be positive");
/// # });
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The kind of failure.
    pub kind: FailureKind,
    /// A message naming the event and, where it applies, the field.
    pub message: String,
}

/// The kinds of [`Failure`].
///
/// ```rust,standalone_crate
/// use action_event::{Envelope, FailureKind, Outcome, State};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let env = Envelope::new("nobody_handles_this", "medium", serde_json::json!({}));
/// match action_event::registry().unwrap().dispatch(&env, State::new().into()).await {
///     Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::UnknownEvent),
///     other => panic!("{other:?}"),
/// }
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A filter or `process` returned `Err`: retried.
    Error,
    /// A filter or `process` panicked: retried.
    Panic,
    /// It ran past its timeout: retried.
    Timeout,
    /// The params do not fit the struct: dead at once (retrying cannot help).
    BadParams,
    /// No handler for this name in this binary: retried (a deploy may bring it).
    UnknownEvent,
}

impl FailureKind {
    /// Whether retrying may help.
    ///
    /// ```
    /// use action_event::FailureKind;
    /// assert!(FailureKind::Timeout.retryable());
    /// assert!(!FailureKind::BadParams.retryable());
    /// ```
    pub fn retryable(self) -> bool {
        !matches!(self, FailureKind::BadParams)
    }
}

impl Registry {
    /// Runs one event in this process: decode the params, run the chain,
    /// then `process`, within the event's timeout; panics are caught.
    ///
    /// ```rust,standalone_crate
    /// # use action_event::prelude::*;
    /// # #[derive(Serialize, Deserialize)] #[action_event] struct AddEvent { a: i32 }
    /// # impl Process for AddEvent { async fn process(self, _: &Context) -> Result<()> {
    /// #     anyhow::ensure!(self.a > 0, "a must be positive"); Ok(()) } }
    /// use action_event::{Envelope, Outcome, State};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let registry = action_event::registry().unwrap();
    /// let env = Envelope::new("add", "medium", serde_json::json!({"a": 1}));
    /// assert_eq!(registry.dispatch(&env, State::new().into()).await, Outcome::Completed);
    /// # });
    /// ```
    pub async fn dispatch(&self, envelope: &Envelope, state: Arc<State>) -> Outcome {
        let Some(event) = self.get(envelope.name.as_str()) else {
            // Not `Error::UnknownEvent`'s text: that one is for the `queue!`
            // call (its fixes are the producer's); a poller says what it knows.
            return Outcome::Failed(Failure {
                kind: FailureKind::UnknownEvent,
                message: format!(
                    "unknown event `{}`: this binary knows {}",
                    envelope.name,
                    known_list(&self.names())
                ),
            });
        };
        let decoded = match (event.handler.decode)(&envelope.params) {
            Ok(d) => d,
            Err(p) => {
                return Outcome::Failed(Failure {
                    kind: FailureKind::BadParams,
                    message: Error::Params {
                        event: envelope.name.clone(),
                        path: p.path,
                        message: p.message,
                    }
                    .to_string(),
                });
            }
        };
        let mut cx = Context::new(envelope, state);
        let run = async {
            for f in &event.chain {
                match (f.run)(&mut cx).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Halt) => return Ok(Some(f.path)),
                    Err(e) => return Err(e.context(format!("before_filter `{}`", f.path))),
                }
            }
            (event.handler.process)(decoded, &cx).await.map(|()| None)
        };
        let guarded = AssertUnwindSafe(run).catch_unwind();
        let result = match event.timeout {
            Some(limit) => match tokio::time::timeout(limit, guarded).await {
                Ok(r) => r,
                Err(_) => {
                    return Outcome::Failed(Failure {
                        kind: FailureKind::Timeout,
                        message: format!(
                            "event `{}` timed out after {}",
                            envelope.name,
                            humantime::format_duration(limit)
                        ),
                    });
                }
            },
            None => guarded.await,
        };
        match result {
            Ok(Ok(None)) => Outcome::Completed,
            Ok(Ok(Some(filter))) => Outcome::Halted { filter },
            Ok(Err(e)) => Outcome::Failed(Failure {
                kind: FailureKind::Error,
                message: format!("event `{}`: {e:#}", envelope.name),
            }),
            Err(panic) => Outcome::Failed(Failure {
                kind: FailureKind::Panic,
                message: format!(
                    "event `{}` panicked: {}",
                    envelope.name,
                    panic_message(&*panic)
                ),
            }),
        }
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "no events (is the crate that defines them linked? see `use my_events as _;` in the README)"
            .to_string()
    } else {
        known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}
