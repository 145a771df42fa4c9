//! The brokers against real backends, in one test binary (one link of
//! lapin, rustls, SQLite and tokio instead of one per file).
//!
//! - `contract`: the behaviour every backend shares (publish/take/ack,
//!   strict priority, delays, retries, dead letters, give-back, redelivery
//!   after a lost owner, depth), written once and run against each backend:
//!   `contract::sqlite::strict_priority`, `contract::amqp::strict_priority`.
//!   A new backend implements `test_support::Backend` in its own module and
//!   adds one `contract_suite!` line in `contract.rs`.
//! - One module per backend for what only that backend has, named after the
//!   test file it was (`sqlite_broker`, `amqp_broker`, ...), so an old test
//!   name is still `<old file>::<test>`.
//! - `test_support`: fixtures and helpers shared by the modules.
//!
//! To add a module: put `tests/broker/<name>.rs` next to this file and a
//! `mod <name>;` line below. RabbitMQ tests skip loudly (`SKIPPED: no
//! RabbitMQ`) without a broker unless `ACTION_EVENT_REQUIRE_AMQP=1`.

mod test_support;

mod contract;
mod contract_checked;

// Errors of real brokers: transient or not.
mod transient;

// SQLite only.
mod sqlite_acks;
mod sqlite_broker;
mod sqlite_owner;

// PostgreSQL only.
mod postgres_ahead;
mod postgres_broker;

// RabbitMQ only: on the shared broker, then on private nodes
// (`action_event_test_support::rabbit_node`).
mod amqp_broker;
mod amqp_consumer_timeout;
mod amqp_private_node;
mod amqp_quorum_ttl;
mod amqp_tls;
