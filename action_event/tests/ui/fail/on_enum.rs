use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event]
pub enum HelloWorldEvent {
    World,
    Moon,
}

fn main() {}
