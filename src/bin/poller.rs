//! The demo's poller: `cargo run --bin poller -- --help`.

use action_event::State;
use demo::AppConfig;

fn main() -> std::process::ExitCode {
    action_event::poller::main(State::new().with(AppConfig::default()))
}
