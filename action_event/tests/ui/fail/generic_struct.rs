use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event]
pub struct HelloWorldEvent<T> {
    pub name: T,
}

fn main() {}
