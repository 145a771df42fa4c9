//! `cargo run --example rabbitmq`: a producer and two pollers on RabbitMQ
//! (guest/guest on 127.0.0.1:5672, or `ACTION_EVENT_AMQP_URL`). The
//! producer queues 20 events; two pollers, each with its own connection,
//! share them and stop once the queues are empty; each event runs once.
//!
//! Without a broker it says why and exits 0 (`SKIPPED: ...`), unless
//! `ACTION_EVENT_REQUIRE_AMQP=1` (CI), where that is a failure.
//!
//! Its queues are `example.rabbitmq.<queue>` (the `prefix` URL option), so it
//! shares a vhost with other apps without touching their queues.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use action_event::poller::{Poller, PollerConfig, Shutdown};
use action_event::prelude::*;
use action_event::{Client, State};

/// `prefetch=1`: a poller holds one event ahead per queue, so the two share
/// the work (the default, 32, favours one poller's throughput).
const DEFAULT_URL: &str =
    "amqp://guest:guest@127.0.0.1:5672/%2f?prefix=example.rabbitmq.&prefetch=1";
const EVENTS: u32 = 20;

/// Which poller ran which image of this run (the `u64`), shared by both
/// pollers.
#[derive(Clone)]
struct Runs(Arc<Mutex<BTreeMap<u32, Vec<&'static str>>>>, u64);

/// The name of the poller, in its state.
struct PollerName(&'static str);

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high")]
pub struct ResizeImageEvent {
    /// Which run of the example queued it: one left over from an
    /// interrupted earlier run is processed but not counted.
    pub run: u64,
    pub image: u32,
}

impl Process for ResizeImageEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let poller = cx.state::<PollerName>()?.0;
        tokio::time::sleep(Duration::from_millis(20)).await; // the work
        let runs = cx.state::<Runs>()?;
        if self.run == runs.1 {
            let mut runs = runs.0.lock().unwrap_or_else(|e| e.into_inner());
            runs.entry(self.image).or_default().push(poller);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("ACTION_EVENT_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let required = std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() == Ok("1");
    let producer = match action_event::broker::connect(&url).await {
        Ok(b) => b,
        Err(e) if !required => {
            println!(
                "SKIPPED: no RabbitMQ at {}: {e}",
                action_event::redact_url(&url)
            );
            println!("start one (e.g. `docker run -p 5672:5672 rabbitmq`) to run this example");
            return Ok(());
        }
        Err(e) => {
            let e = action_event::anyhow::Error::from(e);
            return Err(e.context("no RabbitMQ, and ACTION_EVENT_REQUIRE_AMQP=1 forbids a skip"));
        }
    };

    // The producer: `queue!` through a client on its own connection.
    Client::from_broker(producer).set_global();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    for image in 0..EVENTS {
        queue!(resize_image, run = run, image = image).await?;
    }
    println!("queued {EVENTS} events");

    // Two pollers, each on its own connection, as on two machines.
    let runs = Runs(Arc::default(), run);
    let mut pollers = tokio::task::JoinSet::new();
    for name in ["a", "b"] {
        let broker = action_event::broker::connect(&url).await?;
        let state = State::new().with(PollerName(name)).with(runs.clone());
        let config = PollerConfig {
            exit_when_empty: true,
            concurrency: 2,
            ..PollerConfig::default()
        };
        let poller = Poller::new(broker, state, config)?;
        pollers.spawn(async move { (name, poller.run(Shutdown::new()).await) });
    }
    while let Some(done) = pollers.join_next().await {
        let (name, summary) = done?;
        println!("poller {name}: {} completed", summary?.completed);
    }

    let runs = runs.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ran_once = (0..EVENTS).all(|i| runs.get(&i).is_some_and(|by| by.len() == 1));
    action_event::anyhow::ensure!(ran_once, "every event must run exactly once: {runs:?}");
    println!("each of the {EVENTS} events ran once");
    Ok(())
}
