use std::rc::Rc;

use action_event::prelude::*;

#[derive(Serialize, Deserialize)]
#[action_event]
pub struct HelloWorldEvent {
    pub name: String,
}

async fn greet(name: &str) {
    println!("hello {name}");
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        let name = Rc::new(self.name);
        greet(&name).await;
        Ok(())
    }
}

fn main() {}
