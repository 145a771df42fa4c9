//! PostgreSQL rows: action_event's PostgreSQL broker against hand-written
//! sqlx loops on the same tables (the broker's own schema, created by
//! opening it), in the same run: enqueue (single and bulk), drain at
//! concurrency 1/8/64, idle CPU of 4 waiting pollers, per-event cost at
//! growing backlogs. Each row works in a schema of its own, dropped after.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use action_event::broker::Broker;
use action_event::broker::postgres::PostgresBroker;
use action_event::envelope::now_ms;
use action_event::sqlx::{self, PgPool, postgres::PgPoolOptions};
use action_event::{Client, Envelope, QueueRequest};
use anyhow::{Context as _, ensure};

use crate::Plan;
use crate::cpu::{Meter, Run, Server};
use crate::event::{self, NAME};
use crate::fw::{self, Until};
use crate::report::{Report, Row, Target, fmt_rate, fmt_us, scale_target, thousands};

const B: &str = "postgres";
/// Rows per statement of the bulk rows and of every untimed fill.
const CHUNK: usize = 1_000;
/// The broker's default pool size; the raw loops get as many connections.
const POOL: u32 = 10;

/// Whether PostgreSQL answers at `url`.
pub async fn available(url: &str) -> Result<(), String> {
    sqlx::PgPool::connect(url)
        .await
        .map(|_| ())
        .map_err(|e| format!("no PostgreSQL at {}: {e}", action_event::redact_url(url)))
}

/// One row's schema: the broker's tables, a raw pool on the same database.
struct Place {
    base: String,
    schema: String,
    raw: PgPool,
}

impl Place {
    async fn new(plan: &Plan, tag: &str) -> anyhow::Result<Place> {
        static N: AtomicU64 = AtomicU64::new(0);
        let schema = format!(
            "bench_{}_{tag}_{}",
            plan.run_id,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let place = Place {
            base: plan.postgres_url.clone(),
            raw: PgPoolOptions::new()
                .max_connections(POOL)
                .connect(&plan.postgres_url)
                .await?,
            schema,
        };
        drop(place.broker().await?); // creates the tables
        Ok(place)
    }
    fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.base, self.schema)
    }
    async fn broker(&self) -> anyhow::Result<PostgresBroker> {
        Ok(PostgresBroker::open(&self.url()).await?)
    }
    async fn drop_schema(&self) {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&self.raw)
            .await;
    }
    fn insert_one(&self) -> String {
        format!(
            "INSERT INTO {}.events (event_id, queue, name, body, visible_at, queued_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            self.schema
        )
    }
    fn insert_many(&self) -> String {
        format!(
            "INSERT INTO {}.events (event_id, queue, name, body, visible_at, queued_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])",
            self.schema
        )
    }
    /// Puts `n` `bench_noop` events in `medium`, in statements of [`CHUNK`]
    /// rows (untimed setup; the rows `queue!` writes).
    async fn fill(&self, n: u64) -> anyhow::Result<()> {
        self.fill_range(0, n).await
    }
    /// Puts the events numbered `from..to` in `medium` (as [`Place::fill`]).
    async fn fill_range(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let sql = self.insert_many();
        let mut i = from;
        while i < to {
            let end = (i + CHUNK as u64 * 10).min(to);
            let (ids, bodies) = bodies(i, end)?;
            insert_chunk(&self.raw, &sql, &ids, &bodies).await?;
            i = end;
        }
        Ok(())
    }
}

fn bodies(from: u64, to: u64) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    for i in from..to {
        let (id, body) = event::body(i, None)?;
        ids.push(id);
        bodies.push(body);
    }
    Ok((ids, bodies))
}

async fn insert_chunk(
    pool: &PgPool,
    sql: &str,
    ids: &[String],
    bodies: &[String],
) -> anyhow::Result<()> {
    let now = now_ms() as i64;
    let n = ids.len();
    sqlx::query(sql)
        .bind(ids)
        .bind(vec!["medium"; n])
        .bind(vec![NAME; n])
        .bind(bodies)
        .bind(vec![now; n])
        .bind(vec![now; n])
        .execute(pool)
        .await?;
    Ok(())
}

/// The hand-written drain: `concurrency` tasks, each claiming the first
/// ready row of `high`, then `medium`, then `low` with `FOR UPDATE SKIP
/// LOCKED` (a lease and a claim token, as a job table needs), decoding it,
/// and deleting it by id and claim. Returns the time to the `n`-th delete.
async fn raw_drain(place: &Place, n: u64, concurrency: usize) -> anyhow::Result<Duration> {
    let s = &place.schema;
    let claim = Arc::new(format!(
        "UPDATE {s}.events SET visible_at = $3, claim = $4, deliveries = deliveries + 1 \
         WHERE id = (SELECT id FROM {s}.events WHERE queue = $1 AND visible_at <= $2 \
         ORDER BY visible_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, body"
    ));
    let delete = Arc::new(format!(
        "DELETE FROM {s}.events WHERE id = $1 AND claim = $2"
    ));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let (pool, claim, delete, done) = (
            place.raw.clone(),
            claim.clone(),
            delete.clone(),
            done.clone(),
        );
        set.spawn(async move {
            let token = t as i64 + 1;
            while done.load(Ordering::Relaxed) < n {
                let now = now_ms() as i64;
                let mut got = None;
                for q in crate::sqlite::QUEUES {
                    got = sqlx::query_as::<_, (i64, String)>(&claim)
                        .bind(q)
                        .bind(now)
                        .bind(now + 30_000)
                        .bind(token)
                        .fetch_optional(&pool)
                        .await?;
                    if got.is_some() {
                        break;
                    }
                }
                let Some((id, body)) = got else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                event::decode(body.as_bytes())?;
                sqlx::query(&delete)
                    .bind(id)
                    .bind(token)
                    .execute(&pool)
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("raw drain task")??;
    }
    Ok(started.elapsed())
}

/// Every PostgreSQL row.
pub async fn rows(plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let mut push = |what: String, r: anyhow::Result<Row>| {
        report.push_result(
            B,
            &what,
            r.map(|mut row| {
                row.what = what.clone();
                row
            }),
        )
    };
    if plan.wants("enqueue") {
        push(
            "Enqueue (queue!, 64 tasks)".into(),
            enqueue_single(plan).await,
        );
        push(
            "Enqueue bulk (publish_many, 1,000 per call)".into(),
            enqueue_bulk(plan).await,
        );
    }
    if plan.wants("process") {
        for c in plan.concurrencies {
            push(format!("Drain, concurrency {c}"), drain(plan, c).await);
        }
    }
    if plan.wants("idle") {
        push(
            "Idle CPU, 4 waiting pollers (concurrency 8)".into(),
            idle(plan).await,
        );
    }
    if plan.wants("scale") {
        let mut first = None;
        for (idx, size) in plan.scale_sizes.iter().enumerate() {
            let r = scale(plan, *size).await.map(|(fw, raw, row)| {
                scale_target(&plan.scale_sizes, idx, &mut first, fw, row)
                    .ratio(fw.as_secs_f64() / raw.as_secs_f64())
            });
            push(format!("Per-event cost, {} waiting", thousands(*size)), r);
        }
    }
    Ok(())
}

async fn enqueue_single(plan: &Plan) -> anyhow::Result<Row> {
    let n = plan.n;
    let server = Server::postgres();
    let (mut best_fw, mut best_raw) = (Run::default(), Run::default());
    for _ in 0..plan.reps {
        let place = Place::new(plan, "enq").await?;
        let client = Client::from_broker(Arc::new(place.broker().await?));
        let meter = Meter::start(&server);
        let elapsed = fw::enqueue(&client, n, plan.enqueue_tasks).await?;
        best_fw = Run::new(n, elapsed, meter.stop(n)).best(&best_fw);
        place.drop_schema().await;

        let place = Place::new(plan, "enqraw").await?;
        let sql = Arc::new(place.insert_one());
        let meter = Meter::start(&server);
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for t in 0..plan.enqueue_tasks {
            let (pool, sql) = (place.raw.clone(), sql.clone());
            let tasks = plan.enqueue_tasks;
            set.spawn(async move {
                let mut i = t;
                while i < n {
                    let (id, body) = event::body(i, None)?;
                    let now = now_ms() as i64;
                    sqlx::query(&sql)
                        .bind(id)
                        .bind("medium")
                        .bind(NAME)
                        .bind(body)
                        .bind(now)
                        .bind(now)
                        .execute(&pool)
                        .await?;
                    i += tasks;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r.context("raw enqueue task")??;
        }
        let elapsed = started.elapsed();
        best_raw = Run::new(n, elapsed, meter.stop(n)).best(&best_raw);
        place.drop_schema().await;
    }
    Ok(rate_row(best_fw, best_raw, "sqlx INSERT per event"))
}

async fn enqueue_bulk(plan: &Plan) -> anyhow::Result<Row> {
    let n = plan.n;
    let envs: Vec<Envelope> = (0..n)
        .map(|i| QueueRequest::new(NAME).param("i", i).into_envelope())
        .collect::<Result<_, _>>()?;
    let (ids, bodies): (Vec<String>, Vec<String>) = envs
        .iter()
        .map(|e| {
            (
                e.id.to_string(),
                String::from_utf8_lossy(&e.to_bytes()).into_owned(),
            )
        })
        .unzip();
    let server = Server::postgres();
    let (mut best_fw, mut best_raw) = (Run::default(), Run::default());
    for _ in 0..plan.reps {
        let place = Place::new(plan, "bulk").await?;
        let broker = place.broker().await?;
        let meter = Meter::start(&server);
        let started = Instant::now();
        for chunk in envs.chunks(CHUNK) {
            broker.publish_many(chunk).await?;
        }
        let elapsed = started.elapsed();
        best_fw = Run::new(n, elapsed, meter.stop(n)).best(&best_fw);
        drop(broker);
        place.drop_schema().await;

        let place = Place::new(plan, "bulkraw").await?;
        let sql = place.insert_many();
        let meter = Meter::start(&server);
        let started = Instant::now();
        for (i, b) in ids.chunks(CHUNK).zip(bodies.chunks(CHUNK)) {
            insert_chunk(&place.raw, &sql, i, b).await?;
        }
        let elapsed = started.elapsed();
        best_raw = Run::new(n, elapsed, meter.stop(n)).best(&best_raw);
        place.drop_schema().await;
    }
    Ok(rate_row(best_fw, best_raw, "sqlx multi-row INSERT"))
}

/// A throughput row of the runs `f` (action_event) and `r` (the baseline
/// named `label`), with their CPU; ≥ 0.8x.
fn rate_row(f: Run, r: Run, label: &str) -> Row {
    Row::new(B, "")
        .framework(fmt_rate(f.rate))
        .baseline(format!("{} ({label})", fmt_rate(r.rate)))
        .ratio(f.rate / r.rate)
        .target(Target::AtLeast(0.8))
        .cpu(Some(&f.cpu), &r.cpu, label)
}

async fn drain(plan: &Plan, concurrency: usize) -> anyhow::Result<Row> {
    let n = plan.n;
    let server = Server::postgres();
    let (mut best_fw, mut best_raw) = (Run::default(), Run::default());
    for _ in 0..plan.reps {
        let place = Place::new(plan, "drain").await?;
        place.fill(n).await?;
        let broker = Arc::new(place.broker().await?);
        let meter = Meter::start(&server);
        let run = fw::run_poller(broker, concurrency, Until::Empty(n), plan.limit).await?;
        let cpu = meter.stop(n);
        ensure!(
            run.probe.done() == n,
            "{} of {n} events ran",
            run.probe.done()
        );
        let to_nth = run.to_nth.context("the n-th event never started")?;
        best_fw = Run::new(n, to_nth, cpu).best(&best_fw);
        place.drop_schema().await;

        let place = Place::new(plan, "drainraw").await?;
        place.fill(n).await?;
        let meter = Meter::start(&server);
        let elapsed = raw_drain(&place, n, concurrency).await?;
        best_raw = Run::new(n, elapsed, meter.stop(n)).best(&best_raw);
        place.drop_schema().await;
    }
    Ok(rate_row(
        best_fw,
        best_raw,
        "sqlx SKIP LOCKED claim + delete",
    ))
}

/// 4 pollers (each its own broker, concurrency 8) on empty queues for
/// 10 s (`--quick`: 2 s): this process's CPU time over that wall time. CPU
/// time comes in 10 ms clock ticks, so a 2 s window sees 0.5 % steps and a
/// 10 s one 0.1 % steps.
async fn idle(plan: &Plan) -> anyhow::Result<Row> {
    let place = Place::new(plan, "idle").await?;
    let mut pollers = Vec::new();
    let stop = action_event::poller::Shutdown::new();
    for _ in 0..4 {
        let broker: Arc<dyn Broker> = Arc::new(place.broker().await?);
        let poller = action_event::poller::Poller::new(
            broker,
            action_event::State::new(),
            action_event::poller::PollerConfig {
                concurrency: 8,
                ..Default::default()
            },
        )?;
        let stop = stop.clone();
        pollers.push(tokio::spawn(async move { poller.run(stop).await }));
    }
    // Let them start and settle into waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = Duration::from_secs(if plan.quick { 2 } else { 10 });
    let cpu0 = event::cpu_time();
    tokio::time::sleep(wall).await;
    let cpu = event::cpu_time().saturating_sub(cpu0);
    stop.graceful();
    for p in pollers {
        p.await.context("poller task")??;
    }
    place.drop_schema().await;
    let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    Ok(Row::new(B, "")
        .framework(format!(
            "{share:.2} % of a core ({:?} CPU in {wall:?})",
            cpu
        ))
        .baseline("-")
        .target(Target::Check {
            text: format!("< 1 %: {share:.2} %"),
            pass: share < 1.0,
        }))
}

/// `size` events waiting; the time per event of taking `plan.scale_sample`
/// of them (poller at concurrency 8 vs the raw loop at 8).
async fn scale(plan: &Plan, size: u64) -> anyhow::Result<(Duration, Duration, Row)> {
    let sample = plan.scale_sample.min(size);
    let place = Place::new(plan, "scale").await?;
    place.fill(size).await?;
    let run = fw::run_poller(
        Arc::new(place.broker().await?),
        8,
        Until::Events(sample),
        plan.limit,
    )
    .await?;
    let fw_cost = run.to_nth.context("the sample never finished")? / sample as u32;
    // The poller may have run a few more than the sample (in flight when it
    // stopped): back to `size` waiting (untimed), so the raw loop measures
    // at the same backlog and never waits for events that are not there.
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}.events", place.schema))
        .fetch_one(&place.raw)
        .await?;
    let left = u64::try_from(left).unwrap_or(0);
    if left < size {
        place.fill_range(size, size + (size - left)).await?;
    }
    let raw_cost = raw_drain(&place, sample, 8).await? / sample as u32;
    place.drop_schema().await;
    let row = Row::new(B, "")
        .framework(fmt_us(fw_cost))
        .baseline(format!("{} (sqlx loop)", fmt_us(raw_cost)));
    Ok((fw_cost, raw_cost, row))
}
