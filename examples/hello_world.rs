//! `cargo run --example hello_world`: queues `hello_world` and processes it
//! in this one process, on a SQLite file in a temporary directory, and
//! prints `hello world`. No broker, no setup.
//!
//! The same flow as two commands on the default `sqlite://action_event.db`
//! (a producer, then a poller): see the README's first command.

use action_event::poller::{Poller, PollerConfig, Shutdown};
use action_event::prelude::*;
use action_event::{Client, State};

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high")]
pub struct HelloWorldEvent {
    pub name: String,
}

impl Process for HelloWorldEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        println!("hello {}", self.name);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // A broker of our own, in a directory removed at the end.
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let broker = action_event::broker::connect(&url).await?;

    // `queue!` goes through the global client: make it this broker.
    Client::from_broker(broker.clone()).set_global();
    queue!(hello_world, name = "world").await?;

    // A poller in this process that stops once every queue is empty.
    let config = PollerConfig {
        exit_when_empty: true,
        ..PollerConfig::default()
    };
    let summary = Poller::new(broker, State::new(), config)?
        .run(Shutdown::new())
        .await?;
    action_event::anyhow::ensure!(summary.completed == 1, "expected one event: {summary:?}");
    Ok(())
}
