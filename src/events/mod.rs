//! The demo's events.

pub mod application_event;
pub mod hello_world;

pub use application_event::ApplicationEvent;
pub use hello_world::HelloWorldEvent;
