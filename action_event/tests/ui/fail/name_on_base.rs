use action_event::prelude::*;

#[action_event(base, name = "application")]
pub struct ApplicationEvent;

fn main() {}
