//! `hello_world`: prints a greeting.

use action_event::prelude::*;

use crate::AppConfig;
use crate::events::ApplicationEvent;

/// Prints `hello <name>`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high", extends = ApplicationEvent)]
pub struct HelloWorldEvent {
    /// Who to greet.
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let greeting = cx
            .state::<AppConfig>()
            .map(|c| c.greeting.clone())
            .unwrap_or_else(|_| "hello".into());
        println!("{greeting} {}", self.name);
        Ok(())
    }
}
