use action_event::prelude::*;

#[action_event]
pub union HelloWorldEvent {
    pub a: u32,
    pub b: f32,
}

fn main() {}
