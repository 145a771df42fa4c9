use action_event::prelude::*;

#[action_event(base)]
#[before_filter()]
pub struct ApplicationEvent;

fn main() {}
