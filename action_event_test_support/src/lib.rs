//! Helpers the test binaries of `action_event` and of the demo package
//! share, as a dev-dependency of both (not a `#[path]` include across
//! crates). Never published.
//!
//! - [`rabbit_node`]: a private RabbitMQ node for tests that restart the
//!   broker, cut its connections or change its configuration.
//! - [`rabbit_cluster`]: three private nodes clustered, for quorum queues
//!   and node failover.

pub mod rabbit_cluster;
pub mod rabbit_node;
