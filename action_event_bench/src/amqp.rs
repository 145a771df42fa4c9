//! RabbitMQ rows: action_event's `amqp://` backend against hand-written
//! lapin code on the same broker. The framework side needs a build whose
//! `broker::connect` knows `amqp://`; without it those cells say
//! `skipped: ...` and the lapin baselines still run.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use action_event::Client;
use action_event::broker::Broker;
use anyhow::{Context as _, ensure};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

mod enqueue;
mod memory;
mod process;
mod procs;

use crate::Plan;
use crate::child::{self, ChildSpec};
use crate::cpu::Server;
use crate::event::{self, clock_ns, percentiles};
use crate::fw::{self, Until};
use crate::report::{Report, Row, Target, fmt_ms, fmt_rate, fmt_us, rate, scale_target, thousands};

const B: &str = "rabbitmq";
/// The raw consumer's prefetch.
pub const PREFETCH: u16 = 100;
/// Confirms the raw publisher keeps in flight.
pub const WINDOW: usize = 1000;
/// Sends in flight when filling a backlog through the framework (untimed).
const FILL_WINDOW: usize = 1000;
/// The pause between filling a backlog and draining it, on both sides.
/// RabbitMQ drains land in a fast or a slow mode from run to run (poller,
/// 40,000 events: 22,800-23,400 ev/s or 11,700-13,500 ev/s); started right
/// after the fill was confirmed, the poller's drain was slow in 4 of 4 runs,
/// after a 2-5 s pause in 2 of 4. `--reps` (best run) evens out the rest.
pub const FILL_SETTLE: Duration = Duration::from_secs(2);

/// Whether the RabbitMQ rows can run.
pub enum Availability {
    /// No broker: every RabbitMQ row is skipped (or the run fails, see main).
    Down(String),
    /// The broker answers; `fw_skip` says why the framework side cannot run.
    Up { fw_skip: Option<String> },
}

pub async fn raw_connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props))
        .await
        .context("connecting to RabbitMQ timed out")??;
    Ok(conn)
}

fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

async fn declare(ch: &Channel, queue: &str) -> anyhow::Result<u32> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Publishes persistent `bodies` to `queue` through the default exchange,
/// keeping up to `window` confirms in flight; fails on a nack.
pub async fn raw_publish<I>(
    ch: &Channel,
    queue: &str,
    bodies: I,
    window: usize,
) -> anyhow::Result<u64>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    raw_publish_flagged(ch, queue, bodies, window, false).await
}

/// [`raw_publish`], with `mandatory` set as asked (the library publishes
/// every event `mandatory`, so that an unroutable one fails its call
/// instead of vanishing).
pub async fn raw_publish_flagged<I>(
    ch: &Channel,
    queue: &str,
    bodies: I,
    window: usize,
    mandatory: bool,
) -> anyhow::Result<u64>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut inflight = VecDeque::with_capacity(window.min(4096));
    let mut n = 0;
    for body in bodies {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory,
                    immediate: false,
                },
                body.as_ref(),
                persistent(),
            )
            .await?;
        inflight.push_back(confirm);
        if inflight.len() >= window
            && let Some(c) = inflight.pop_front()
        {
            ensure!(c.await?.is_ack(), "publish nacked");
        }
        n += 1;
    }
    for c in inflight {
        ensure!(c.await?.is_ack(), "publish nacked");
    }
    Ok(n)
}

/// The hand-written consumer: prefetch [`PREFETCH`], decodes each body,
/// acks in a spawned task (not awaited inline), until `n` messages.
/// Records enqueue-to-start latencies into `lat` when given.
pub async fn raw_consume(
    conn: &Connection,
    queue: &str,
    n: u64,
    lat: Option<&Mutex<Vec<u64>>>,
) -> anyhow::Result<Duration> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let started = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acks = tokio::task::JoinSet::new();
    let mut done = 0;
    while done < n {
        let delivery = consumer.next().await.context("the consumer ended")??;
        let e = event::decode(&delivery.data)?;
        if let (Some(lat), Some(t)) = (lat, e.t) {
            let l = clock_ns().saturating_sub(t);
            lat.lock().unwrap_or_else(|p| p.into_inner()).push(l);
        }
        let acker = delivery.acker;
        acks.spawn(async move { acker.ack(BasicAckOptions::default()).await });
        done += 1;
        while let Some(r) = acks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = acks.join_next().await {
        r??;
    }
    let elapsed = started.elapsed();
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await?;
    ch.close(200, "OK".into()).await?;
    Ok(elapsed)
}

/// A consumer sitting on an empty queue for `for_`.
pub async fn raw_idle(conn: &Connection, queue: &str, for_: Duration) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-raw-idle".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let got = tokio::time::timeout(for_, consumer.next()).await;
    ensure!(got.is_err(), "the idle queue is not empty");
    ch.close(200, "OK".into()).await?;
    Ok(())
}

/// Deletes every queue and exchange whose name starts with `prefix`
/// (found with `rabbitmqctl`: the framework names its own).
pub async fn cleanup_prefix(ch: &Channel, prefix: &str) {
    for (what, list) in [("queue", "list_queues"), ("exchange", "list_exchanges")] {
        let out = tokio::process::Command::new("timeout")
            .args([
                "60",
                "rabbitmqctl",
                list,
                "-q",
                "--no-table-headers",
                "name",
            ])
            .output()
            .await;
        let Ok(out) = out.map_err(|e| e.to_string()).and_then(|o| {
            if o.status.success() {
                Ok(o)
            } else {
                Err(String::from_utf8_lossy(&o.stderr).to_string())
            }
        }) else {
            eprintln!(
                "  (cannot list {what}s with rabbitmqctl: those named `{prefix}*` may be left)"
            );
            continue;
        };
        for name in String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(prefix))
        {
            let r = if what == "queue" {
                ch.queue_delete(name.into(), QueueDeleteOptions::default())
                    .await
                    .map(|_| ())
            } else {
                ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
                    .await
            };
            if let Err(e) = r {
                eprintln!("  (cannot delete {what} `{name}`: {e})");
            }
        }
    }
}

/// The run's RabbitMQ side: connections and names.
struct Rabbit<'a> {
    plan: &'a Plan,
    /// Publishing connection and a confirm channel on it.
    publish: Connection,
    pch: Channel,
    /// Consuming connection.
    consume: Connection,
    /// Why the framework side does not run, if it does not.
    fw_skip: Option<String>,
    /// The broker's `beam.smp`, whose CPU the throughput rows read.
    server: Server,
    seq: std::cell::Cell<u32>,
}

impl Rabbit<'_> {
    fn name(&self, tag: &str) -> String {
        let n = self.seq.get();
        self.seq.set(n + 1);
        format!("bench.{}.{tag}.{n}", self.plan.run_id)
    }

    /// A fresh framework URL: its own `prefix`, so its queues are its own.
    fn fw_url(&self, tag: &str) -> (String, String) {
        let prefix = format!("{}.", self.name(tag));
        (with_prefix(&self.plan.amqp_url, &prefix), prefix)
    }

    async fn raw_queue(&self, tag: &str) -> anyhow::Result<String> {
        let q = self.name(&format!("raw-{tag}"));
        declare(&self.pch, &q).await?;
        Ok(q)
    }

    async fn drop_queue(&self, q: &str) {
        let _ = self
            .pch
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }

    async fn raw_fill(&self, q: &str, n: u64) -> anyhow::Result<()> {
        let bodies = (0..n).map(|i| event::body(i, None).map(|(_, b)| b.into_bytes()));
        let bodies = bodies.collect::<anyhow::Result<Vec<_>>>()?;
        raw_publish(&self.pch, q, &bodies, WINDOW).await?;
        tokio::time::sleep(FILL_SETTLE).await;
        Ok(())
    }

    fn skipped(&self, what: &str, baseline: String) -> Option<Row> {
        self.fw_skip.as_ref().map(|_| {
            let mut r = Row::new(B, what).baseline(baseline);
            r.status = Some("skipped: `amqp://` not supported by this build (see notes)".into());
            r
        })
    }
}

/// The hidden `__fill --url` subcommand (for profiling a drain child):
/// `events` no-op events into `medium` through the framework, or raw into
/// `queue`.
pub fn fill_main(url: &str, queue: Option<&str>, events: u64) -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                match queue {
                    Some(q) => {
                        let conn = raw_connect(url, "bench-fill").await?;
                        let ch = conn.create_channel().await?;
                        ch.confirm_select(ConfirmSelectOptions::default()).await?;
                        declare(&ch, q).await?;
                        let bodies = (0..events).map(|i| event::body(i, None).map(|(_, b)| b));
                        let bodies = bodies.collect::<anyhow::Result<Vec<_>>>()?;
                        raw_publish(&ch, q, &bodies, WINDOW).await?;
                        let _ = conn.close(200, "OK".into()).await;
                    }
                    None => {
                        let client = Client::connect(url).await?;
                        fw::fill(&client, events, FILL_WINDOW).await?;
                    }
                }
                Ok(())
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("action_event_bench __fill: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A framework URL on `url` with its own `prefix`, and the raw consumer's
/// prefetch (the framework's default is 32: fewer events held back from
/// other pollers; 100 drained 5-12 % faster here).
pub fn with_prefix(url: &str, prefix: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}prefix={prefix}&prefetch={PREFETCH}")
}

fn probe_prefix(plan: &Plan) -> String {
    format!("bench.{}.probe.", plan.run_id)
}

pub async fn availability(plan: &Plan) -> Availability {
    match raw_connect(&plan.amqp_url, "bench-probe").await {
        Err(e) => {
            return Availability::Down(format!(
                "no RabbitMQ at {}: {e:#}",
                action_event::redact_url(&plan.amqp_url)
            ));
        }
        Ok(conn) => {
            let _ = conn.close(200, "OK".into()).await;
        }
    }
    let prefix = probe_prefix(plan);
    let fw_skip = match action_event::broker::connect(&with_prefix(&plan.amqp_url, &prefix)).await {
        Ok(b) => {
            drop(b);
            None
        }
        Err(action_event::Error::BadUrl { message, .. }) if message.contains("unknown scheme") => {
            Some(format!(
                "`amqp://` is not supported by this build of action_event (`broker::connect`: {message})"
            ))
        }
        // Any other failure shows in the rows themselves.
        Err(_) => None,
    };
    Availability::Up { fw_skip }
}

pub async fn rows(plan: &Plan, report: &mut Report, fw_skip: Option<String>) -> anyhow::Result<()> {
    let publish = raw_connect(&plan.amqp_url, "bench-raw-publish").await?;
    let pch = publish.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let consume = raw_connect(&plan.amqp_url, "bench-raw-consume").await?;
    if fw_skip.is_none() {
        // What the availability probe's connect may have declared.
        cleanup_prefix(&pch, &probe_prefix(plan)).await;
    }
    let r = Rabbit {
        plan,
        publish,
        pch,
        consume,
        fw_skip,
        server: Server::rabbitmq(&plan.amqp_url),
        seq: std::cell::Cell::new(0),
    };
    let n = plan.n;

    if plan.wants("enqueue") {
        enqueue::rows(&r, report).await;
    }

    if plan.wants("process") {
        process::rows(&r, report).await;
    }

    if plan.wants("procs") {
        eprintln!("rabbitmq: processing in own processes");
        procs::rows(&r, report).await;
    }

    if plan.wants("latency") {
        eprintln!("rabbitmq: latency");
        let what = format!(
            "Enqueue-to-start latency p50 / p99 / max, {}/s for {}s, concurrency {}",
            plan.latency_rate, plan.latency_secs, plan.latency_concurrency
        );
        let row = latency(&r, &what).await;
        report.push_result(B, &what, row);
    }

    if plan.wants("memory") {
        eprintln!("rabbitmq: memory");
        memory::rows(&r, report).await;
    }

    if plan.wants("scale") {
        eprintln!("rabbitmq: scale");
        scale(&r, report).await;
    }

    if plan.wants("two") {
        eprintln!("rabbitmq: two pollers");
        let what = format!(
            "Drain {}: two poller processes vs one (concurrency 8 each)",
            thousands(n)
        );
        let row = match r.skipped(&what, "one poller process".into()) {
            Some(row) => Ok(row),
            None => two_pollers(&r).await.map(|(one, two)| {
                Row::new(B, &what)
                    .framework(format!("two: {}", fmt_rate(two)))
                    .baseline(format!("one poller process: {}", fmt_rate(one)))
                    .ratio(two / one)
            }),
        };
        report.push_result(B, &what, row);
    }

    let _ = r.pch.close(200, "OK".into()).await;
    let _ = r.publish.close(200, "OK".into()).await;
    let _ = r.consume.close(200, "OK".into()).await;
    Ok(())
}

async fn fw_broker_filled(
    r: &Rabbit<'_>,
    tag: &str,
    n: u64,
) -> anyhow::Result<(Arc<dyn Broker>, String)> {
    let (url, prefix) = r.fw_url(tag);
    let broker = action_event::broker::connect(&url).await?;
    fw::fill(&Client::from_broker(broker.clone()), n, FILL_WINDOW).await?;
    tokio::time::sleep(FILL_SETTLE).await;
    Ok((broker, prefix))
}

type Lat = (u64, u64, u64);

/// The latency row: each side runs `reps` times, taking turns, and the run
/// with the lowest p99 of each side counts (as the best run counts in the
/// throughput rows: a p99 of 10,000 samples is the 100th worst, and one
/// stall of this shared machine moves it by tens of ms).
async fn latency(r: &Rabbit<'_>, what: &str) -> anyhow::Result<Row> {
    let mut raw: Option<Lat> = None;
    let mut fw: Option<Lat> = None;
    for _ in 0..r.plan.reps.max(1) {
        let b = raw_latency(r).await?;
        if raw.is_none_or(|x| b.1 < x.1) {
            raw = Some(b);
        }
        if r.fw_skip.is_none() {
            let f = fw_latency(r).await?;
            if fw.is_none_or(|x| f.1 < x.1) {
                fw = Some(f);
            }
        }
    }
    let raw = raw.context("no latency run")?;
    let baseline = format!(
        "lapin publisher + consumer (prefetch {PREFETCH}): {} / {} / {}",
        fmt_ms(raw.0),
        fmt_ms(raw.1),
        fmt_ms(raw.2)
    );
    if let Some(row) = r.skipped(what, baseline.clone()) {
        return Ok(row);
    }
    let f = fw.context("no latency run")?;
    Ok(Row::new(B, what)
        .framework(format!(
            "{} / {} / {}",
            fmt_ms(f.0),
            fmt_ms(f.1),
            fmt_ms(f.2)
        ))
        .baseline(baseline)
        .ratio(f.1 as f64 / raw.1.max(1) as f64)
        .target(Target::AtMost(1.5)))
}

/// One run of the raw publisher and consumer at the latency row's rate.
async fn raw_latency(r: &Rabbit<'_>) -> anyhow::Result<Lat> {
    let plan = r.plan;
    let total = ((plan.latency_rate as f64) * plan.latency_secs)
        .round()
        .max(1.0) as u64;
    let q = r.raw_queue("latency").await?;
    let lat = Arc::new(Mutex::new(Vec::new()));
    let raw = async {
        let consumer = {
            let (url, q, lat) = (plan.amqp_url.clone(), q.clone(), lat.clone());
            tokio::spawn(async move {
                let conn = raw_connect(&url, "bench-raw-latency").await?;
                raw_consume(&conn, &q, total, Some(&lat)).await?;
                let _ = conn.close(200, "OK".into()).await;
                Ok::<_, anyhow::Error>(())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ch = r.pch.clone();
        let qq = q.clone();
        fw::produce_steady(total, plan.latency_rate, move |i| {
            let (ch, q) = (ch.clone(), qq.clone());
            async move {
                let (_, body) = event::body(i, Some(clock_ns()))?;
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        q.as_str().into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        persistent(),
                    )
                    .await?;
                ensure!(confirm.await?.is_ack(), "publish nacked");
                Ok(())
            }
        })
        .await?;
        tokio::time::timeout(plan.limit, consumer)
            .await
            .context("raw consumer timed out")???;
        let v = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        percentiles(v).context("no latencies")
    }
    .await;
    r.drop_queue(&q).await;
    raw
}

/// One run of `queue!` and a poller at the latency row's rate.
async fn fw_latency(r: &Rabbit<'_>) -> anyhow::Result<Lat> {
    let plan = r.plan;
    let (url, prefix) = r.fw_url("latency");
    let result = async {
        let poller_broker = action_event::broker::connect(&url).await?;
        let client = Client::connect(&url).await?;
        let lat = fw::latency(
            client,
            poller_broker,
            plan.latency_concurrency,
            plan.latency_rate,
            plan.latency_secs,
        )
        .await?;
        percentiles(lat).context("no latencies")
    }
    .await;
    cleanup_prefix(&r.pch, &prefix).await;
    result
}

async fn scale(r: &Rabbit<'_>, report: &mut Report) {
    let plan = r.plan;
    let k = plan.scale_sample;
    let mut first: Option<Duration> = None;
    for (idx, &w) in plan.scale_sizes.iter().enumerate() {
        let what = format!(
            "Per-event cost with {} waiting ({} processed, concurrency 8)",
            thousands(w),
            thousands(k)
        );
        // Each side takes `k` events `reps` times from a queue holding
        // `w + reps * k`, so at least `w` are waiting throughout; the best
        // run counts (as in the SQLite rows: one sample swung widely).
        let reps = plan.reps as u64;
        let row = async {
            let q = r.raw_queue("scale").await?;
            let raw = async {
                // Filled in chunks: a million bodies need not sit in memory.
                let total = w + reps * k;
                let mut i = 0;
                while i < total {
                    let m = (total - i).min(100_000);
                    let bodies = (i..i + m)
                        .map(|j| event::body(j, None).map(|(_, b)| b.into_bytes()))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    raw_publish(&r.pch, &q, &bodies, WINDOW).await?;
                    i += m;
                }
                tokio::time::sleep(FILL_SETTLE).await;
                let mut best = Duration::MAX;
                for _ in 0..reps {
                    best = best.min(raw_consume(&r.consume, &q, k, None).await? / k as u32);
                }
                Ok::<_, anyhow::Error>(best)
            }
            .await;
            r.drop_queue(&q).await;
            let raw = raw?;
            let baseline = format!("lapin consumer: {}", fmt_us(raw));
            if let Some(row) = r.skipped(&what, baseline.clone()) {
                return Ok((row, None));
            }
            let (broker, prefix) = fw_broker_filled(r, "scale", w + reps * k).await?;
            let fw = async {
                let mut best = Duration::MAX;
                for _ in 0..reps {
                    let run =
                        fw::run_poller(broker.clone(), 8, Until::Events(k), plan.limit).await?;
                    best = best.min(run.to_nth.context("the poller stopped early")? / k as u32);
                }
                Ok::<_, anyhow::Error>(best)
            }
            .await;
            drop(broker);
            cleanup_prefix(&r.pch, &prefix).await;
            let fw = fw?;
            let row = Row::new(B, &what)
                .framework(fmt_us(fw))
                .baseline(baseline)
                .ratio(fw.as_secs_f64() / raw.as_secs_f64());
            Ok::<_, anyhow::Error>((row, Some(fw)))
        }
        .await
        .map(|(row, fw)| match fw {
            Some(fw) => scale_target(&plan.scale_sizes, idx, &mut first, fw, row),
            None => row,
        });
        report.push_result(B, &what, row);
    }
}

async fn two_pollers(r: &Rabbit<'_>) -> anyhow::Result<(f64, f64)> {
    let n = r.plan.n;
    let mut rates = Vec::new();
    for procs in [1, 2] {
        let (broker, prefix) = fw_broker_filled(r, "two-pollers", n).await?;
        let url = with_prefix(&r.plan.amqp_url, &prefix);
        let specs = (0..procs)
            .map(|_| ChildSpec::fw(&url, "drain", 0, "0"))
            .collect();
        let result = child::run_many(r.plan, specs).await;
        let left = broker.depth("medium").await.map(|d| d.waiting);
        drop(broker);
        cleanup_prefix(&r.pch, &prefix).await;
        let (elapsed, results) = result?;
        let done: u64 = results.iter().map(|x| x.done).sum();
        ensure!(
            done == n,
            "{procs} poller(s) completed {done} events of {n}: an event ran twice or not at all"
        );
        ensure!(left? == 0, "events left after the drain");
        rates.push(rate(n, elapsed));
    }
    Ok((rates[0], rates[1]))
}
