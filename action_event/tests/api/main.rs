//! The event API without a broker, in one test binary: names, filter chains
//! through `extends`, outcomes of `Registry::dispatch`, and what `queue!` and
//! `QueueRequest` build. One module per former test file, so an old test
//! name is still `<old file>::<test>`.
//!
//! The events of every module meet in this binary's one registry
//! (`action_event::registry()`), so event names must differ across modules
//! (`queueing` uses `greet_world` because `names` has `hello_world`), and a
//! test that lists the registry filters it by its module's path
//! (`api::names::`). Tests whose registry is an error on purpose
//! (`duplicate_names`, `extends_cycle`, `skip_not_in_chain`) stay binaries
//! of their own.
//!
//! To add a module: put `tests/api/<name>.rs` next to this file and a
//! `mod <name>;` line below.

mod chain;
mod names;
mod outcomes;
mod queueing;
