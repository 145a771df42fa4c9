use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event]
pub struct HelloWorldEvent {
    pub name: String,
}

fn main() {}
