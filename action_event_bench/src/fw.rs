//! The framework side of every row, the same for both backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use action_event::broker::Broker;
use action_event::poller::{Poller, PollerConfig, RunSummary, Shutdown};
use action_event::{Client, QueueRequest, State, queue};
use anyhow::{Context as _, bail, ensure};
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::event::{NAME, Probe, clock_ns};

/// What one poller run did.
pub struct PollerRun {
    /// From `Poller::run` to the start of the `n`-th event (see [`Until`]).
    pub to_nth: Option<Duration>,
    pub summary: RunSummary,
    pub probe: Arc<Probe>,
}

/// When a poller run ends.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// `exit_when_empty`; `n` events are expected.
    Empty(u64),
    /// A graceful stop once the `n`-th event started.
    Events(u64),
}

/// Runs the library poller in this process on `broker` (queues `high
/// medium low`) until `until`. Fails after `limit`.
pub async fn run_poller(
    broker: Arc<dyn Broker>,
    concurrency: usize,
    until: Until,
    limit: Duration,
) -> anyhow::Result<PollerRun> {
    let stop = Shutdown::new();
    let (probe, exit_when_empty) = match until {
        Until::Empty(n) => (Probe::new(n, None), true),
        Until::Events(n) => (Probe::new(n, Some(stop.clone())), false),
    };
    let config = PollerConfig {
        concurrency,
        exit_when_empty,
        ..PollerConfig::default()
    };
    let poller = Poller::new(broker, State::new().with(probe.clone()), config)?;
    let watchdog = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            stop.immediate();
        })
    };
    let started = Instant::now();
    let summary = poller.run(stop).await?;
    let elapsed = started.elapsed();
    watchdog.abort();
    if elapsed >= limit {
        bail!(
            "the poller did not finish within {limit:?} ({} events run)",
            probe.done()
        );
    }
    let to_nth = probe.reached().map(|t| t.duration_since(started));
    Ok(PollerRun {
        to_nth,
        summary,
        probe,
    })
}

/// `n` `queue!(bench_noop, i = i)` calls from `tasks` concurrent tasks,
/// through the global client (set to `client`). Returns the wall time.
pub async fn enqueue(client: &Client, n: u64, tasks: u64) -> anyhow::Result<Duration> {
    client.clone().set_global();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        set.spawn(async move {
            let mut i = t;
            while i < n {
                queue!(bench_noop, i = i).await?;
                i += tasks;
            }
            Ok::<_, action_event::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("enqueue task")??;
    }
    Ok(started.elapsed())
}

/// `n` events queued in one `queue_many` call through the global client
/// (set to `client`); the requests are built inside the timer, as an app
/// builds them. Returns the wall time.
pub async fn enqueue_bulk(client: &Client, n: u64) -> anyhow::Result<Duration> {
    client.clone().set_global();
    let started = Instant::now();
    let ids =
        action_event::queue_many((0..n).map(|i| QueueRequest::new(NAME).param("i", i))).await?;
    ensure!(
        ids.len() as u64 == n,
        "queue_many returned {} ids for {n}",
        ids.len()
    );
    Ok(started.elapsed())
}

/// Fills a backlog through the client, `window` sends in flight (untimed setup).
pub async fn fill(client: &Client, n: u64, window: usize) -> anyhow::Result<()> {
    futures_util::stream::iter(0..n)
        .map(|i| client.send(QueueRequest::new(NAME).param("i", i)))
        .buffer_unordered(window)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    Ok(())
}

/// The latency row: a poller at `concurrency` on `poller_broker`, events
/// queued through `client` at `rate`/s for `secs`. Returns the latencies (ns).
pub async fn latency(
    client: Client,
    poller_broker: Arc<dyn Broker>,
    concurrency: usize,
    rate: u64,
    secs: f64,
) -> anyhow::Result<Vec<u64>> {
    let total = ((rate as f64) * secs).round().max(1.0) as u64;
    let limit = Duration::from_secs_f64(secs + 60.0);
    let poller = tokio::spawn(run_poller(
        poller_broker,
        concurrency,
        Until::Events(total),
        limit,
    ));
    // Let the poller start before the clock runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let producer = produce_steady(total, rate, move |i| {
        let client = client.clone();
        async move {
            client
                .send(QueueRequest::new(NAME).param("i", i).param("t", clock_ns()))
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }
    });
    producer.await?;
    let run = poller.await.context("poller task")??;
    let lat = run.probe.latencies();
    ensure!(
        lat.len() as u64 >= total,
        "only {} of {total} events ran",
        lat.len()
    );
    Ok(lat)
}

/// Calls `send(i)` for `i` in `0..total` at a steady `rate`/s, each in its
/// own task (a slow confirm does not slow the schedule); waits for all.
pub async fn produce_steady<F, Fut>(total: u64, rate: u64, send: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        set.spawn(send(i));
        while let Some(r) = set.try_join_next() {
            r.context("send task")??;
        }
    }
    while let Some(r) = set.join_next().await {
        r.context("send task")??;
    }
    Ok(())
}
