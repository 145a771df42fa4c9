use action_event::prelude::*;

#[action_event(base = true)]
pub struct ApplicationEvent;

fn main() {}
