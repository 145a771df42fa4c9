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
//! ## What is not guaranteed
//! - Order: events of one queue start roughly in the order they were queued;
//!   with several pollers or retries they may finish in any order.
//! - Exactly once: on the happy path each event runs once; when a poller dies
//!   mid-event it runs again (at least once). Make handlers idempotent.
//! - Linking: a crate of events that the binary never names is dropped by the
//!   linker with no warning; write `use my_events as _;` in the poller.

#![warn(missing_docs)]

pub mod broker;
mod client;
pub mod envelope;
mod error;
mod event;
pub mod poller;
mod registry;
pub mod testing;

pub use action_event_macros::{action_event, before_filter, queue, skip_before_filter};
pub use client::{Client, QueueExt, QueueRequest};
pub use envelope::{Envelope, EventId};
pub use error::{Error, redact_url};
pub use event::{BaseEvent, Context, Event, EventParams, Flow, Process, State};
pub use registry::{
    ChainFilter, DEFAULT_QUEUE, DEFAULT_RETRIES, EventInfo, Failure, FailureKind, Outcome,
    Registry, registry,
};

/// What handlers and filters return: any error converts with `?`.
///
/// ```
/// fn parse(s: &str) -> action_event::Result<u32> {
///     Ok(s.parse::<u32>()?)
/// }
/// assert!(parse("x").is_err());
/// ```
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

/// `anyhow`, re-exported: the error type of [`Result`].
pub use anyhow;

/// Everything an app needs: `use action_event::prelude::*;`.
///
/// ```
/// use action_event::prelude::*;
/// fn _uses(_: Flow, _: Option<&Context>) -> Result<()> { Ok(()) }
/// ```
pub mod prelude {
    pub use crate::{
        Context, Event, EventId, Flow, Process, QueueExt, Result, State, action_event,
        before_filter, queue, skip_before_filter,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Used by the code the macros generate. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::client::QueueRequest;
    pub use crate::event::{BaseEvent, Event, EventParams, Process};
    pub use crate::registry::{
        BoxFuture, EventDecl, FilterDecl, Handler, ParentDecl, SkipDecl, call_filter, decode,
        process,
    };
    pub use crate::{Context, Flow, Result};
    pub use core;
    pub use inventory;
    pub use serde_json;

    /// The full path of a function item, e.g. `demo::events::log_params`.
    pub fn type_name_of<T>(_: &T) -> &'static str {
        core::any::type_name::<T>()
    }

    /// Compile-time check that `T` is a base event.
    pub const fn assert_base<T: ?Sized + BaseEvent>() {}

    /// Compile-time check that `T` can be params.
    pub const fn assert_params<T: EventParams>() {}
}
