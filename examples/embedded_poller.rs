//! An app that runs the poller inside its own `main`, beside its other work,
//! with logs. Needs `action_event`, `serde` (`derive`), `tokio`, `tracing`,
//! `tracing-subscriber` (`env-filter`) and, for its temporary directory,
//! `tempfile`.
//! Run it: `cargo run --example embedded_poller` (SQLite in a temporary
//! directory; set `ACTION_EVENT_URL` for another broker).

use std::time::Duration;

use action_event::poller::{Poller, PollerConfig, Shutdown};
use action_event::prelude::*;
use action_event::{Client, State};

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high")]
pub struct ThumbnailEvent {
    pub image: u32,
}

impl Process for ThumbnailEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        tracing::info!(image = self.image, "thumbnail made");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    action_event::poller::log_panics(); // a handler's panic goes to the log

    let dir = tempfile::tempdir()?;
    let default_url = format!("sqlite://{}", dir.path().join("events.db").display());
    let url = std::env::var("ACTION_EVENT_URL").unwrap_or(default_url);
    let broker = action_event::broker::connect(&url).await?;
    Client::from_broker(broker.clone()).set_global(); // where queue! goes

    // `new` checks the events this binary links (an error, not a panic);
    // `run` goes on until the `Shutdown` handle asks it to stop.
    let config = PollerConfig {
        concurrency: 4,
        ..PollerConfig::default()
    };
    let poller = Poller::new(broker, State::new(), config)?;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(poller.run(shutdown.clone()));

    // The app's own work: here, queue three events, then stop on Ctrl-C or
    // after two seconds.
    for image in 1..=3 {
        queue!(thumbnail, image = image).await?;
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    shutdown.graceful(); // finish what is in hand, take nothing new
    let summary = running.await??;
    tracing::info!(completed = summary.completed, "poller stopped");
    Ok(())
}
