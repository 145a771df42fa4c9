//! `--only quorum`: quorum queues on one private node and on a private
//! 3-node cluster (`action_event_test_support`), action_event (URL with
//! `queue_type=quorum`; on the cluster every node in it) against raw lapin
//! on quorum queues of the same broker, in the same run: enqueue and drain.
//!
//! These rows boot 4 private RabbitMQ nodes (about a minute on 2 cores), so
//! they run only when `--only` names `quorum`; they use at most 20,000
//! events per row (`--events` lowers it): a quorum queue fsyncs on a
//! majority of nodes, and three nodes on one machine share its disk and
//! CPUs.

use std::time::{Duration, Instant};

use action_event::Client;
use action_event_test_support::rabbit_cluster::RabbitCluster;
use anyhow::ensure;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};

use crate::Plan;
use crate::amqp::{PREFETCH, WINDOW, raw_connect, raw_consume, raw_publish};
use crate::cpu::{Meter, Run, Server};
use crate::event;
use crate::fw::{self, Until};
use crate::report::{Report, Row, Target, fmt_rate, thousands};

const B: &str = "rabbitmq quorum";
/// The most events per quorum row.
const MAX_N: u64 = 20_000;
/// Pause between filling a backlog and draining it (both sides).
const SETTLE: Duration = Duration::from_secs(2);
/// The framework poller's concurrency in the drain rows.
const CONCURRENCY: usize = 8;

/// Whether `--only` asked for these rows (they never run by default).
pub fn wanted(plan: &Plan) -> bool {
    plan.only.iter().any(|o| o == "quorum")
}

pub async fn rows(plan: &Plan, report: &mut Report) {
    if !action_event_test_support::rabbit_node::available() {
        report.skip(
            B,
            "Quorum queue rows",
            String::new(),
            "rabbitmq-server is not installed: no private nodes",
        );
        return;
    }
    for (nodes, label) in [(1usize, "one node"), (3, "3-node cluster")] {
        eprintln!("rabbitmq quorum: booting {label}");
        let cluster = tokio::task::block_in_place(|| RabbitCluster::start(nodes, ""));
        if let Err(e) = on(plan, report, &cluster, label).await {
            let mut r = Row::new(B, format!("Quorum rows, {label}"));
            r.status = Some(format!("error: {e:#}"));
            report.push(r);
        }
        tokio::task::block_in_place(|| drop(cluster));
    }
}

struct Side<'a> {
    plan: &'a Plan,
    cluster: &'a RabbitCluster,
    publish: Connection,
    pch: Channel,
    consume: Connection,
    /// Every node's `beam.smp`: the CPU of the broker.
    server: Server,
    seq: std::cell::Cell<u32>,
}

impl Side<'_> {
    fn name(&self, tag: &str) -> String {
        let n = self.seq.get();
        self.seq.set(n + 1);
        format!("bench.{}.{tag}.{n}", self.plan.run_id)
    }

    /// A framework URL: every node, quorum queues, its own prefix.
    fn fw_url(&self, tag: &str) -> String {
        let prefix = format!("{}.", self.name(tag));
        self.cluster.url(&format!(
            "queue_type=quorum&prefix={prefix}&prefetch={PREFETCH}"
        ))
    }

    async fn raw_queue(&self, tag: &str) -> anyhow::Result<String> {
        let q = self.name(&format!("raw-{tag}"));
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
        );
        self.pch
            .queue_declare(q.as_str().into(), QueueDeclareOptions::durable(), args)
            .await?;
        Ok(q)
    }

    async fn drop_queue(&self, q: &str) {
        let _ = self
            .pch
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await;
    }
}

fn bodies(n: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| event::body(i, None).map(|(_, b)| b.into_bytes()))
        .collect()
}

async fn on(
    plan: &Plan,
    report: &mut Report,
    cluster: &RabbitCluster,
    label: &str,
) -> anyhow::Result<()> {
    let n = plan.n.min(MAX_N);
    // The raw side talks to the first node, where its queues' leaders are
    // (declared there); the framework's URL lists every node, the first
    // one first, so it connects there too.
    let url = cluster.node(0).url();
    let publish = raw_connect(&url, "bench-raw-publish").await?;
    let pch = publish.create_channel().await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let consume = raw_connect(&url, "bench-raw-consume").await?;
    let s = Side {
        plan,
        cluster,
        publish,
        pch,
        consume,
        server: Server::nodes((0..cluster.len()).map(|i| cluster.node(i).vm_pid())),
        seq: std::cell::Cell::new(0),
    };

    eprintln!("rabbitmq quorum ({label}): enqueue");
    let what = format!(
        "Quorum queues, {label}: enqueue {}: `queue!` from {} tasks",
        thousands(n),
        plan.enqueue_tasks
    );
    let (mut raw, mut fwr) = (Run::default(), Run::default());
    for _ in 0..plan.reps {
        raw = raw_enqueue(&s, n).await?.best(&raw);
        fwr = fw_enqueue(&s, n).await?.best(&fwr);
    }
    let window = format!("lapin publish to a quorum queue, {WINDOW} confirms in flight");
    report.push(row(&what, &fwr, &raw, &window).target(Target::AtLeast(0.9)));
    // The same callers against a raw publisher with as many confirms in
    // flight as there are callers, and the bulk API against the raw window.
    let tasks = usize::try_from(plan.enqueue_tasks).unwrap_or(usize::MAX);
    let (mut raw_tasks, mut bulk) = (Run::default(), Run::default());
    for _ in 0..plan.reps {
        raw_tasks = raw_enqueue_window(&s, n, tasks).await?.best(&raw_tasks);
        bulk = fw_bulk(&s, n).await?.best(&bulk);
    }
    let what_tasks = format!(
        "Quorum queues, {label}: enqueue {}: `queue!` from {} tasks vs raw with as many confirms in flight",
        thousands(n),
        plan.enqueue_tasks
    );
    let in_flight = format!(
        "lapin publish to a quorum queue, {} confirms in flight",
        plan.enqueue_tasks
    );
    report.push(row(&what_tasks, &fwr, &raw_tasks, &in_flight));
    let what_bulk = format!(
        "Quorum queues, {label}: enqueue {}: one `queue_many` call",
        thousands(n)
    );
    report.push(row(&what_bulk, &bulk, &raw, &window).target(Target::AtLeast(0.9)));

    eprintln!("rabbitmq quorum ({label}): drain");
    let what = format!(
        "Quorum queues, {label}: process {} no-op, concurrency {CONCURRENCY}",
        thousands(n)
    );
    let (mut raw, mut fwr) = (Run::default(), Run::default());
    for _ in 0..plan.reps {
        raw = raw_drain(&s, n).await?.best(&raw);
        fwr = fw_drain(&s, n).await?.best(&fwr);
    }
    let consumer = format!("lapin consumer on a quorum queue, prefetch {PREFETCH}");
    report.push(row(&what, &fwr, &raw, &consumer).target(Target::AtLeast(0.9)));
    let _ = s.pch.close(200, "OK".into()).await;
    let _ = s.publish.close(200, "OK".into()).await;
    let _ = s.consume.close(200, "OK".into()).await;
    Ok(())
}

/// A row of the runs `fw` against `raw` (the baseline named `label`).
fn row(what: &str, fw: &Run, raw: &Run, label: &str) -> Row {
    Row::new(B, what)
        .framework(fmt_rate(fw.rate))
        .baseline(format!("{label}: {}", fmt_rate(raw.rate)))
        .ratio(fw.rate / raw.rate)
        .cpu(Some(&fw.cpu), &raw.cpu, label)
}

async fn raw_enqueue(s: &Side<'_>, n: u64) -> anyhow::Result<Run> {
    raw_enqueue_window(s, n, WINDOW).await
}

/// Raw publishing with up to `window` confirms in flight.
async fn raw_enqueue_window(s: &Side<'_>, n: u64, window: usize) -> anyhow::Result<Run> {
    let q = s.raw_queue("enqueue").await?;
    let bodies = bodies(n)?;
    let meter = Meter::start(&s.server);
    let started = Instant::now();
    let result = raw_publish(&s.pch, &q, &bodies, window).await;
    let elapsed = started.elapsed();
    let cpu = meter.stop(n);
    s.drop_queue(&q).await;
    ensure!(result? == n, "raw publish sent fewer than {n}");
    Ok(Run::new(n, elapsed, cpu))
}

async fn fw_enqueue(s: &Side<'_>, n: u64) -> anyhow::Result<Run> {
    let client = Client::connect(&s.fw_url("enqueue")).await?;
    let meter = Meter::start(&s.server);
    let elapsed = fw::enqueue(&client, n, s.plan.enqueue_tasks).await?;
    let cpu = meter.stop(n);
    let waiting = client.broker().depth("medium").await?.waiting;
    ensure!(waiting == n, "queue! stored {waiting} of {n}");
    Ok(Run::new(n, elapsed, cpu))
}

/// One `queue_many` call of `n` events.
async fn fw_bulk(s: &Side<'_>, n: u64) -> anyhow::Result<Run> {
    let client = Client::connect(&s.fw_url("bulk")).await?;
    let meter = Meter::start(&s.server);
    let elapsed = fw::enqueue_bulk(&client, n).await?;
    let cpu = meter.stop(n);
    let waiting = client.broker().depth("medium").await?.waiting;
    ensure!(waiting == n, "queue_many stored {waiting} of {n}");
    Ok(Run::new(n, elapsed, cpu))
}

async fn raw_drain(s: &Side<'_>, n: u64) -> anyhow::Result<Run> {
    let q = s.raw_queue("drain").await?;
    let result = async {
        raw_publish(&s.pch, &q, &bodies(n)?, WINDOW).await?;
        tokio::time::sleep(SETTLE).await;
        let meter = Meter::start(&s.server);
        let elapsed = raw_consume(&s.consume, &q, n, None).await?;
        Ok::<_, anyhow::Error>(Run::new(n, elapsed, meter.stop(n)))
    }
    .await;
    s.drop_queue(&q).await;
    result
}

async fn fw_drain(s: &Side<'_>, n: u64) -> anyhow::Result<Run> {
    let broker = action_event::broker::connect(&s.fw_url("drain")).await?;
    fw::fill(&Client::from_broker(broker.clone()), n, WINDOW).await?;
    tokio::time::sleep(SETTLE).await;
    let meter = Meter::start(&s.server);
    let run = fw::run_poller(broker, CONCURRENCY, Until::Empty(n), s.plan.limit).await?;
    let cpu = meter.stop(n);
    ensure!(
        run.summary.completed == n,
        "the poller completed {} of {n}",
        run.summary.completed
    );
    let to_nth = run.to_nth.ok_or_else(|| anyhow::anyhow!("no events ran"))?;
    Ok(Run::new(n, to_nth, cpu))
}
