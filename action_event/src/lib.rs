//! # action_event
//!
//! Asynchronous event processing for Rust apps, in the spirit of ActionEvent
//! (Rails, 2009), Sidekiq, Celery and Oban. An app queues an event — a name
//! plus JSON params — from anywhere; pollers on any number of machines take
//! each event and run the handler registered for that name.
//!
//! ```no_run
//! use action_event::prelude::*;
//!
//! /// Every event of the app runs these filters first.
//! #[action_event(base)]
//! #[before_filter(log_params)]
//! pub struct ApplicationEvent;
//!
//! async fn log_params(cx: &mut Context) -> Result<Flow> {
//!     println!("{} {}", cx.name(), cx.params());
//!     Ok(Flow::Continue)
//! }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[action_event(queue = "high", extends = ApplicationEvent)]
//! pub struct HelloWorldEvent { pub name: String }
//!
//! impl Process for HelloWorldEvent {
//!     async fn process(self, _cx: &Context) -> Result<()> {
//!         println!("hello {}", self.name);
//!         Ok(())
//!     }
//! }
//!
//! # async fn app() -> Result<()> {
//! queue!(hello_world, name = "world").await?;                 // by name
//! HelloWorldEvent { name: "world".into() }.queue().await?;    // typed
//! # Ok(()) }
//! ```
//!
//! The poller is your own binary, so that it links your events:
//!
//! ```no_run
//! // src/bin/poller.rs
//! fn main() -> std::process::ExitCode {
//!     action_event::poller::main(action_event::State::new())
//! }
//! ```
//!
//! ## Errors
//!
//! The library's functions return [`Result`]`<T, `[`Error`]`>`: an enum a
//! caller can match, whose variants name the event, the field and the fix,
//! keep their cause (`std::error::Error::source`), and say whether trying
//! again may help ([`Error::is_transient`]). Handlers and filters return
//! [`prelude::Result`], which is `anyhow::Result`: their errors are the
//! app's, of any type, and the library only reports them (the poller logs
//! and keeps the message with the event), so `?` should work on all of them
//! and `.context(..)` add to the message. `use action_event::prelude::*;`
//! brings that `Result` into scope.
//!
//! ## Cargo features
//! - `sqlite` (default): the `sqlite://` backend, the default broker.
//! - `amqp` (default): the RabbitMQ backend over `amqp://`.
//! - `metrics` (default): `poller --metrics ADDR` (`poller::Metrics`).
//! - `tls`: `amqps://` (rustls with ring); implies `amqp`.
//!
//! A URL or flag whose feature is off is an error naming the feature.
//! The smallest app: `action_event = { version = "0.1", default-features =
//! false, features = ["sqlite"] }`.
//!
//! ## What is not guaranteed
//! - Order: events of one queue start roughly in the order they were queued;
//!   with several pollers or retries they may finish in any order.
//! - Exactly once: on the happy path each event runs once; when a poller dies
//!   mid-event it runs again (at least once). Make handlers idempotent.
//! - Linking: a crate of events that the binary never names is dropped by the
//!   linker with no warning; write `use my_events as _;` in the poller.

#![warn(missing_docs)]

// The core, one way down: `event` (what handlers are made of) <- `registry`
// (the catalog) <- `dispatch` (run one envelope) <- `client` (where events
// go: the current client) <- `testing` (installs a fake or inline client).
// Each module uses only those before it (and `error`, `envelope`).
pub mod broker;
mod client;
mod dispatch;
pub mod envelope;
mod error;
mod event;
pub mod periodic;
pub mod poller;
mod registry;
pub mod testing;
#[cfg(feature = "web")]
pub mod web;

/// Marks a struct as an event (or, with `base`, as a base that events extend).
///
/// The struct's fields are the event's params: it derives `Serialize` and
/// `Deserialize`, has named fields, and implements [`Process`]. Keys, in any
/// order, each at most once:
///
/// | key | meaning | default |
/// | --- | --- | --- |
/// | `base` | a base: carries filters and defaults, never processed itself | an event |
/// | `extends = SomeBase` | inherit the base's filters and defaults (any number of levels) | none |
/// | `name = "..."` | the event name (not on a base) | the struct name in snake case without `Event` |
/// | `queue = "high"` | the queue it goes to unless the call site says | inherited, else `medium` |
/// | `retries = 3` | how many times a failure is retried | inherited, else [`DEFAULT_RETRIES`] |
/// | `timeout = "30s"` | the limit on one run (filters and `process`) | inherited, else none |
///
/// Every mistake is a compile error at the token that is wrong, saying how
/// to fix it: an unknown key, a value of the wrong type, a duration that does
/// not parse, `extends` of a type that is not a base, a filter with the wrong
/// signature, a `process` whose future is not `Send`, a missing `Process`
/// impl or serde derive.
///
/// ```
/// use action_event::prelude::*;
///
/// #[action_event(base, queue = "low", retries = 5)]
/// #[before_filter(log_params)]
/// pub struct ApplicationEvent;
///
/// async fn log_params(cx: &mut Context) -> Result<Flow> {
///     println!("{} {}", cx.name(), cx.params());
///     Ok(Flow::Continue)
/// }
///
/// #[derive(Serialize, Deserialize)]
/// #[action_event(extends = ApplicationEvent, queue = "high", timeout = "30s")]
/// pub struct SendEmailEvent { pub people_ids: Vec<u64> }
///
/// impl Process for SendEmailEvent {
///     async fn process(self, _cx: &Context) -> Result<()> {
///         println!("mailing {:?}", self.people_ids);
///         Ok(())
///     }
/// }
///
/// assert_eq!(<SendEmailEvent as action_event::Event>::NAME, "send_email");
/// ```
///
/// An enum is not an event (its params are a JSON object, so a struct's
/// named fields):
///
/// ```compile_fail
/// use action_event::prelude::*;
/// #[derive(Serialize, Deserialize)]
/// #[action_event]
/// pub enum Greeting { Hello, Goodbye }
/// ```
pub use action_event_macros::action_event;

/// Adds before filters to an event or a base, run in the order written,
/// after those it inherits.
///
/// A filter is `async fn(cx: &mut Context) -> Result<Flow>`; a path names it,
/// so a typo is a compile error. [`Flow::Halt`] stops the chain: the event is
/// not processed and counts as handled. Adding a filter that is already in
/// the inherited chain moves it to its new place (it runs once). The
/// attribute may be written above or below `#[action_event]`.
///
/// ```
/// use action_event::prelude::*;
///
/// async fn authorize(cx: &mut Context) -> Result<Flow> {
///     let admin: bool = cx.param("admin").unwrap_or(false);
///     Ok(if admin { Flow::Continue } else { Flow::Halt })
/// }
///
/// #[derive(Serialize, Deserialize)]
/// #[action_event]
/// #[before_filter(authorize)]
/// pub struct PurgeEvent { pub admin: bool }
///
/// impl Process for PurgeEvent {
///     async fn process(self, _cx: &Context) -> Result<()> { Ok(()) }
/// }
/// ```
///
/// A filter that takes `&Context` instead of `&mut Context` does not compile:
///
/// ```compile_fail
/// use action_event::prelude::*;
/// async fn log(cx: &Context) -> Result<Flow> { Ok(Flow::Continue) }
/// #[action_event(base)]
/// #[before_filter(log)]
/// pub struct ApplicationEvent;
/// ```
pub use action_event_macros::before_filter;

/// Removes inherited before filters from an event or a base.
///
/// Skipping a filter that is not in the chain at that level is an error of
/// the registry (see [`registry()`]) that names the event and the filter.
///
/// ```
/// use action_event::prelude::*;
///
/// async fn load_tenant(_cx: &mut Context) -> Result<Flow> { Ok(Flow::Continue) }
///
/// #[action_event(base)]
/// #[before_filter(load_tenant)]
/// pub struct ApplicationEvent;
///
/// #[derive(Serialize, Deserialize)]
/// #[action_event(extends = ApplicationEvent)]
/// #[skip_before_filter(load_tenant)]
/// pub struct SignupEvent { pub email: String }
///
/// impl Process for SignupEvent {
///     async fn process(self, _cx: &Context) -> Result<()> { Ok(()) }
/// }
/// ```
pub use action_event_macros::skip_before_filter;

/// Queues an event by name: `queue!(name, key = value, ...)`, a future of
/// `Result<EventId, Error>`.
///
/// The name is an identifier or a string literal. Each `key = value` is a
/// param: a Rust expression (serialized with serde) or a JSON array or
/// object literal. Three keys are not params: `queue` (an identifier, a
/// string or an expression; else the handler's queue, else `medium`),
/// `delay` (a duration string checked at compile time, or a
/// [`std::time::Duration`]) and `at` (a [`std::time::SystemTime`]). It goes
/// through the current [`Client`] (a poller's inside a handler, a test
/// mode's in a test, else the global one; see [`QueueRequest::send`]); for
/// a name computed at run time use [`QueueRequest`].
///
/// ```no_run
/// use action_event::prelude::*;
///
/// # async fn app() -> Result<()> {
/// let user_name = String::from("world");
/// queue!(hello_world, name = user_name).await?;
/// queue!(send_email, people_ids = [1, 2, 3], queue = high).await?;
/// queue!("invoice_paid", invoice = { "id": 7, "lines": [] }).await?;
/// let id: EventId = queue!(reminder, id = 5, delay = "30s").await?;
/// # Ok(()) }
/// ```
///
/// The name must be an event this binary links: its queue and its params'
/// check come from the handler's struct. Any other name is an error at the
/// call ([`Error::UnknownEvent`]), which names the fix: the nearest name
/// for a typo, `use my_events as _;` for a binary that links no events.
/// An event of another service, which this binary cannot know, is queued
/// with [`QueueRequest::foreign`] and a stated queue.
///
/// A delay that is not a duration does not compile:
///
/// ```compile_fail
/// # async fn app() -> action_event::Result<()> {
/// action_event::queue!(reminder, id = 5, delay = "30 parsecs").await?;
/// # Ok(()) }
/// ```
///
/// Commas inside a value (generics, closures, macro calls) stay in it: a
/// closure is one value, and the error is that it is not `Serialize`
/// (E0277), not a stray `b| a + b` that is not `key = value`:
///
/// ```compile_fail,E0277
/// # async fn app() -> action_event::Result<()> {
/// action_event::queue!(stats, add = |a: u8, b: u8| a + b, n = 1).await?;
/// # Ok(()) }
/// ```
pub use action_event_macros::queue;
pub use client::{Client, QueueExt, QueueRequest, Queueing, QueueingMany, queue_many};

pub use dispatch::{Failure, FailureKind, Outcome};
pub use envelope::{Envelope, EventId};
pub use error::{BoxError, Error, redact_url};
pub use event::{BaseEvent, Context, Event, EventParams, Flow, Process, State};
pub use registry::{ChainFilter, DEFAULT_QUEUE, DEFAULT_RETRIES, EventInfo, Registry, registry};
/// sqlx, re-exported (feature `postgres`): the driver whose connections and
/// transactions [`Queueing::on`] takes. Name this one (or the same 0.8
/// version) so that the app's `Transaction` is the type action_event expects.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::sqlx::Error> {
/// let pool = action_event::sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "postgres")]
pub use sqlx;

/// What the library's own functions return: its [`Error`], which says what
/// failed, wraps the cause, and tells a retry from a mistake
/// ([`Error::is_transient`]).
///
/// Handlers and filters return [`prelude::Result`] instead (anyhow's), so
/// that `?` works there on any error.
///
/// ```
/// fn queue_name(s: &str) -> action_event::Result<String> {
///     let env = action_event::QueueRequest::foreign(s).queue("high").into_envelope()?;
///     Ok(env.queue)
/// }
/// assert_eq!(queue_name("billing_sync").unwrap(), "high");
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `anyhow`, re-exported: the error type of [`prelude::Result`], what
/// handlers and filters return.
///
/// ```
/// use action_event::anyhow::{Context as _, anyhow};
/// let err: action_event::prelude::Result<()> = Err(anyhow!("no user 5")).context("welcome");
/// assert_eq!(format!("{:#}", err.unwrap_err()), "welcome: no user 5");
/// ```
pub use anyhow;

/// Everything an app needs: `use action_event::prelude::*;`.
///
/// ```
/// use action_event::prelude::*;
/// fn _uses(_: Flow, _: Option<&Context>) -> Result<()> { Ok(()) }
/// ```
pub mod prelude {
    pub use crate::{
        Context, Event, EventId, Flow, Process, QueueExt, State, action_event, before_filter,
        queue, skip_before_filter,
    };
    pub use serde::{Deserialize, Serialize};

    pub use crate::event::Result;
}

/// Used by the code the macros generate. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::client::QueueRequest;
    pub use crate::event::Result;
    pub use crate::event::{BaseEvent, Event, ParamsError, Process};
    pub use crate::periodic::{PeriodicDecl, periodic_params};
    pub use crate::registry::{
        BoxFuture, EventDecl, FilterDecl, Handler, ParentDecl, SkipDecl, call_filter, decode,
        process,
    };
    pub use crate::{Context, Flow};
    pub use core;
    pub use inventory;
    pub use serde_json;

    /// The full path of a function item, e.g. `demo::events::log_params`.
    pub fn type_name_of<T>(_: &T) -> &'static str {
        core::any::type_name::<T>()
    }

    /// Compile-time check that `T` is a base event.
    pub const fn assert_base<T: ?Sized + BaseEvent>() {}
}
