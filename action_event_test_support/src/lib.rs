//! Helpers the test binaries of `action_event` and of the demo package
//! share, as a dev-dependency of both (not a `#[path]` include across
//! crates). Never published.
//!
//! - [`rabbit_node`]: a private RabbitMQ node for tests that restart the
//!   broker, cut its connections or change its configuration.

pub mod rabbit_node;
