use action_event::prelude::*;

#[action_event(base)]
#[before_filter("log_params")]
pub struct ApplicationEvent;

fn main() {}
