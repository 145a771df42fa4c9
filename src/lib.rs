//! The demo app of action_event: its events live in [`events`], its poller
//! in `src/bin/poller.rs`.

pub mod events;

/// The app's environment, handed to the poller and reached from handlers
/// with `cx.state::<AppConfig>()`.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Printed before every greeting.
    pub greeting: String,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            greeting: "hello".into(),
        }
    }
}
