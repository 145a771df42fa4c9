//! The generic poller (being written): the app's own binary calls
//! [`main`], so that it links the app's events.
//!
//! ```no_run
//! // src/bin/poller.rs
//! fn main() -> std::process::ExitCode {
//!     action_event::poller::main(action_event::State::new())
//! }
//! ```

/// Runs the poller CLI.
///
/// ```no_run
/// struct AppConfig { greeting: String }
/// fn main() -> std::process::ExitCode {
///     let state = action_event::State::new().with(AppConfig { greeting: "hello".into() });
///     action_event::poller::main(state)
/// }
/// ```
pub fn main(_state: crate::State) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
