//! The demo package's end-to-end tests in one test binary (one link of
//! lapin, rustls, SQLite and tokio instead of one per file): real poller
//! processes (`tests/support/e2e_poller.rs`) on real brokers, killed with
//! real signals, and how an app tests its events (`demo_events`).
//!
//! One module per former test file, so an old test name is still
//! `<old file>::<test>`. `common` (tests/common/mod.rs) is what they share:
//! a world per test, the e2e poller, the backends, and `HEAVY`, the lock
//! that keeps latency-measuring and core-loading tests from running at the
//! same time now that they share a process. Private RabbitMQ nodes come
//! from the `action_event_test_support` crate.
//!
//! To add a module: put `tests/e2e/<name>.rs` next to this file (with
//! `use crate::common::*;` instead of `mod common;`) and a `mod <name>;`
//! line below. The one event type a module defines for `queue!` must have a
//! name no other module uses (they share one registry). Tests that build
//! other Cargo projects stay binaries of their own: `readme.rs`,
//! `generate.rs`, `linking.rs`.

#[path = "../common/mod.rs"]
mod common;

mod amqp_e2e;
mod amqp_recovery_e2e;
mod cli_e2e;
mod cluster_dlx_e2e;
mod cluster_e2e;
mod cluster_stall;
mod cluster_timeout_e2e;
mod cluster_ttl_e2e;
mod consumer_timeout_e2e;
mod demo_events;
mod failures_e2e;
mod observability;
mod pause_e2e;
mod periodic_e2e;
mod poller_e2e;
mod postgres_tx_e2e;
mod quorum_e2e;
mod sqlite_recovery_e2e;
mod stall_e2e;
mod status_e2e;
mod status_recovery_e2e;
mod tls_e2e;
mod web_e2e;
