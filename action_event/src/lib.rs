//! action_event: asynchronous event processing for Rust apps.

pub mod broker;
pub mod envelope;
mod error;

pub use envelope::{Envelope, EventId};
pub use error::{Error, redact_url};
