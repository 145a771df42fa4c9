//! The generic poller (being written).

/// Runs the poller CLI.
pub fn main(_state: crate::State) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
