//! SQLite rows: action_event's SQLite broker against hand-written rusqlite
//! loops on a file with the same schema, pragmas and SQL shape.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use action_event::Client;
use action_event::broker::sqlite::SqliteBroker;
use action_event::envelope::now_ms;
use anyhow::{Context as _, ensure};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::Plan;
use crate::child::{self, ChildSpec};
use crate::event::{self, clock_ns, percentiles};
use crate::fw::{self, Until};
use crate::report::{
    Report, Row, Target, fmt_mb, fmt_ms, fmt_rate, fmt_us, rate, scale_target, thousands,
};

mod throughput;

const B: &str = "sqlite";
/// The queues a poller serves, in priority order; every backlog is in `medium`.
pub const QUEUES: [&str; 3] = ["high", "medium", "low"];
const LEASE_MS: i64 = 30_000;
/// How long the raw loops sleep when nothing is ready: the SQLite broker's
/// first poll interval.
pub const RAW_POLL: Duration = Duration::from_millis(5);

// The hand-written SQL: what one would write for a job table with a lease.
const RAW_INSERT: &str = "INSERT INTO events (event_id, queue, name, body, visible_at, queued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const RAW_SELECT: &str = "SELECT id, body FROM events WHERE queue = ?1 AND visible_at <= ?2 \
     ORDER BY visible_at, id LIMIT 1";
const RAW_CLAIM: &str =
    "UPDATE events SET visible_at = ?2, claim = ?3, deliveries = deliveries + 1 WHERE id = ?1";
const RAW_DELETE: &str = "DELETE FROM events WHERE id = ?1 AND claim = ?2";

/// A database file of this run.
pub struct Db {
    pub path: PathBuf,
}

impl Db {
    pub fn fresh(dir: &Path, tag: &str) -> Db {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Db {
            path: dir.join(format!("{tag}-{n}.db")),
        }
    }
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
    /// Creates the file with the broker's own schema and pragmas (by opening
    /// it once with the broker), so both sides use the same table and index.
    pub async fn create(&self) -> anyhow::Result<()> {
        drop(SqliteBroker::open(&self.url()).await?);
        Ok(())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        for ext in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(ext);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A hand-written connection: WAL, `synchronous=NORMAL`, a busy timeout (the
/// broker's pragmas).
pub fn raw_conn(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode}");
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Puts `n` `bench_noop` events (`i` from `first`) in `medium`, 10,000
/// rows per transaction (untimed setup; same rows `queue!` writes).
pub fn bulk_fill(path: &Path, first: u64, n: u64) -> anyhow::Result<()> {
    let mut conn = raw_conn(path)?;
    let mut i = first;
    let end = first + n;
    while i < end {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(RAW_INSERT)?;
            let now = now_ms() as i64;
            for j in i..(i + 10_000).min(end) {
                let (id, body) = event::body(j, None)?;
                stmt.execute(params![id, "medium", event::NAME, body, now, now])?;
            }
        }
        tx.commit()?;
        i = (i + 10_000).min(end);
    }
    Ok(())
}

/// Claims the first ready row in priority order in one `BEGIN IMMEDIATE`
/// transaction (select, then update with a claim token and a lease).
fn raw_claim(conn: &mut Connection, claim: &str) -> anyhow::Result<Option<(i64, String)>> {
    let now = now_ms() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = {
        let mut select = tx.prepare_cached(RAW_SELECT)?;
        let mut found = None;
        for q in QUEUES {
            found = select
                .query_row(params![q, now], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if found.is_some() {
                break;
            }
        }
        found
    };
    let Some((id, body)) = found else {
        return Ok(None);
    };
    tx.prepare_cached(RAW_CLAIM)?
        .execute(params![id, now + LEASE_MS, claim])?;
    tx.commit()?;
    Ok(Some((id, body)))
}

/// The hand-written poll loop: claim, decode, delete, one row at a time,
/// until nothing is ready (or `limit` rows). Calls `on` with each event.
pub fn raw_drain(
    conn: &mut Connection,
    limit: Option<u64>,
    mut on: impl FnMut(event::NoopEvent),
) -> anyhow::Result<u64> {
    let mut done = 0;
    let salt = u128::from(std::process::id()) << 64;
    while limit.is_none_or(|l| done < l) {
        let claim = format!("{:032x}", salt | u128::from(done));
        let Some((id, body)) = raw_claim(conn, &claim)? else {
            break;
        };
        on(event::decode(body.as_bytes())?);
        conn.prepare_cached(RAW_DELETE)?
            .execute(params![id, claim])?;
        done += 1;
    }
    Ok(done)
}

/// The raw loop's idle behaviour: a claim attempt every [`RAW_POLL`].
pub fn raw_idle(conn: &mut Connection, for_: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < for_ {
        ensure!(
            raw_claim(conn, "idle")?.is_none(),
            "the idle queue is not empty"
        );
        std::thread::sleep(RAW_POLL);
    }
    Ok(())
}

/// [`raw_idle`] from a Tokio runtime: each claim attempt on the blocking
/// pool, a Tokio sleep of [`RAW_POLL`] between them.
pub async fn raw_idle_async(conn: Connection, for_: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let conn = std::sync::Arc::new(std::sync::Mutex::new(conn));
    while started.elapsed() < for_ {
        let conn = conn.clone();
        let found = blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| anyhow::anyhow!("the connection mutex is poisoned"))?;
            Ok(raw_claim(&mut conn, "idle")?.is_some())
        })
        .await?;
        ensure!(!found, "the idle queue is not empty");
        tokio::time::sleep(RAW_POLL).await;
    }
    Ok(())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task")?
}

pub(crate) async fn filled(dir: &Path, tag: &str, n: u64) -> anyhow::Result<Db> {
    let db = Db::fresh(dir, tag);
    db.create().await?;
    let path = db.path.clone();
    blocking(move || bulk_fill(&path, 0, n)).await?;
    Ok(db)
}

async fn depth(db: &Db) -> anyhow::Result<u64> {
    let path = db.path.clone();
    blocking(move || {
        let conn = raw_conn(&path)?;
        Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
    })
    .await
}

pub async fn rows(plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("action_event_bench.")
        .tempdir()
        .context("temp dir")?;
    let dir = dir.path();
    let n = plan.n;

    throughput::rows(plan, dir, report).await;

    if plan.wants("latency") {
        eprintln!("sqlite: latency");
        let what = format!(
            "Enqueue-to-start latency p50 / p99 / max, {}/s for {}s, concurrency {}",
            plan.latency_rate, plan.latency_secs, plan.latency_concurrency
        );
        let r = latency(plan, dir).await.map(|(f, b)| {
            Row::new(B, &what)
            .framework(format!("{} / {} / {}", fmt_ms(f.0), fmt_ms(f.1), fmt_ms(f.2)))
            .baseline(format!(
                "rusqlite producer thread + claim loop polling every {RAW_POLL:?}: {} / {} / {}",
                fmt_ms(b.0),
                fmt_ms(b.1),
                fmt_ms(b.2)
            ))
            .ratio(f.1 as f64 / b.1.max(1) as f64)
        });
        report.push_result(B, &what, r);
    }

    if plan.wants("memory") {
        eprintln!("sqlite: memory");
        memory(plan, dir, report).await;
    }

    if plan.wants("scale") {
        eprintln!("sqlite: scale");
        scale(plan, dir, report).await;
    }

    if plan.wants("two") {
        eprintln!("sqlite: two pollers");
        let what = format!(
            "Drain {}: two poller processes vs one (concurrency 8 each)",
            thousands(n)
        );
        let r = two_pollers(plan, dir).await.map(|(one, two)| {
            Row::new(B, &what)
                .framework(format!("two: {}", fmt_rate(two)))
                .baseline(format!("one poller process: {}", fmt_rate(one)))
                .ratio(two / one)
        });
        report.push_result(B, &what, r);
    }
    Ok(())
}

type Lat = (u64, u64, u64);

async fn latency(plan: &Plan, dir: &Path) -> anyhow::Result<(Lat, Lat)> {
    let fw_db = Db::fresh(dir, "latency-fw");
    let poller_broker = action_event::broker::connect(&fw_db.url()).await?;
    let client = Client::connect(&fw_db.url()).await?;
    let lat = fw::latency(
        client,
        poller_broker,
        plan.latency_concurrency,
        plan.latency_rate,
        plan.latency_secs,
    )
    .await?;
    let fw = percentiles(lat).context("no latencies")?;

    let raw_db = Db::fresh(dir, "latency-raw");
    raw_db.create().await?;
    let total = ((plan.latency_rate as f64) * plan.latency_secs)
        .round()
        .max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / plan.latency_rate as f64);
    let (p1, p2) = (raw_db.path.clone(), raw_db.path.clone());
    let limit = plan.limit;
    let consumer = std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
        let mut conn = raw_conn(&p1)?;
        let mut lat = Vec::with_capacity(total as usize);
        let started = Instant::now();
        while (lat.len() as u64) < total {
            ensure!(started.elapsed() < limit, "raw consumer timed out");
            let got = raw_drain(&mut conn, Some(1), |e| {
                lat.push(clock_ns().saturating_sub(e.t.unwrap_or(0)))
            })?;
            if got == 0 {
                std::thread::sleep(RAW_POLL);
            }
        }
        Ok(lat)
    });
    std::thread::sleep(Duration::from_millis(200));
    let producer = std::thread::spawn(move || -> anyhow::Result<()> {
        let conn = raw_conn(&p2)?;
        let mut stmt = conn.prepare_cached(RAW_INSERT)?;
        let start = Instant::now();
        for i in 0..total {
            let at = start + period.mul_f64(i as f64);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let (id, body) = event::body(i, Some(clock_ns()))?;
            let now = now_ms() as i64;
            stmt.execute(params![id, "medium", event::NAME, body, now, now])?;
        }
        Ok(())
    });
    let (p, c) = blocking(move || Ok((producer.join(), consumer.join()))).await?;
    p.map_err(|_| anyhow::anyhow!("raw producer panicked"))??;
    let raw = c.map_err(|_| anyhow::anyhow!("raw consumer panicked"))??;
    let raw = percentiles(raw).context("no latencies")?;
    Ok((fw, raw))
}

async fn memory(plan: &Plan, dir: &Path, report: &mut Report) {
    let n = plan.n;
    let idle_ms = plan.idle.as_millis().to_string();
    let what = format!(
        "Poller peak RSS idle ({}s, concurrency 8, own process)",
        plan.idle.as_secs_f64()
    );
    let r = async {
        let fw_db = Db::fresh(dir, "mem-idle-fw");
        fw_db.create().await?;
        let raw_db = Db::fresh(dir, "mem-idle-raw");
        raw_db.create().await?;
        let fw = child::run_one(plan, ChildSpec::fw(&fw_db.url(), "idle", 0, &idle_ms)).await?;
        let raw = child::run_one(
            plan,
            ChildSpec::raw_sqlite(&raw_db.path, "idle", 0, &idle_ms),
        )
        .await?;
        Ok::<_, anyhow::Error>(
            Row::new(B, &what)
                .framework(format!("{} (RSS {})", fmt_mb(fw.hwm_kb), fmt_mb(fw.rss_kb)))
                .baseline(format!(
                    "rusqlite poll loop process: {} (RSS {})",
                    fmt_mb(raw.hwm_kb),
                    fmt_mb(raw.rss_kb)
                ))
                .ratio(fw.hwm_kb as f64 / raw.hwm_kb.max(1) as f64)
                .target(Target::AtMost(1.3)),
        )
    }
    .await;
    report.push_result(B, &what, r);

    let what = format!(
        "Poller peak RSS after draining {} (concurrency 8, own process)",
        thousands(n)
    );
    let r = async {
        let fw_db = filled(dir, "mem-drain-fw", n).await?;
        let fw = child::run_one(plan, ChildSpec::fw(&fw_db.url(), "drain", n, "0")).await?;
        ensure!(fw.done == n, "the poller drained {} of {n}", fw.done);
        drop(fw_db);
        let raw_db = filled(dir, "mem-drain-raw", n).await?;
        let raw =
            child::run_one(plan, ChildSpec::raw_sqlite(&raw_db.path, "drain", n, "0")).await?;
        ensure!(raw.done == n, "the raw loop drained {} of {n}", raw.done);
        let mb = fw.hwm_kb as f64 / 1024.0;
        Ok::<_, anyhow::Error>(
            Row::new(B, &what)
                .framework(format!(
                    "{} (RSS {}; CPU {})",
                    fmt_mb(fw.hwm_kb),
                    fmt_mb(fw.rss_kb),
                    fmt_us(fw.cpu / n as u32)
                ))
                .baseline(format!(
                    "rusqlite claim+delete loop process: {} (RSS {}; CPU {})",
                    fmt_mb(raw.hwm_kb),
                    fmt_mb(raw.rss_kb),
                    fmt_us(raw.cpu / n as u32)
                ))
                .ratio(fw.hwm_kb as f64 / raw.hwm_kb.max(1) as f64)
                .target(Target::Check {
                    text: "< 40 MB".into(),
                    pass: mb < 40.0,
                }),
        )
    }
    .await;
    report.push_result(B, &what, r);
}

async fn scale(plan: &Plan, dir: &Path, report: &mut Report) {
    let k = plan.scale_sample;
    let mut first: Option<Duration> = None;
    for (idx, &w) in plan.scale_sizes.iter().enumerate() {
        let what = format!(
            "Per-event cost with {} waiting ({} processed, concurrency 8)",
            thousands(w),
            thousands(k)
        );
        // Each side drains `k` events `reps` times from a file holding
        // `w + reps * k`, so at least `w` are waiting throughout; the best
        // run counts (a slow run is mostly other load on the box).
        let reps = plan.reps as u64;
        let r = async {
            let raw_db = filled(dir, "scale-raw", w + reps * k).await?;
            let fw_db = filled(dir, "scale-fw", w + reps * k).await?;
            let broker = action_event::broker::connect(&fw_db.url()).await?;
            let (mut raw_best, mut fw_best) = (Duration::MAX, Duration::MAX);
            for _ in 0..reps {
                let path = raw_db.path.clone();
                let raw = blocking(move || {
                    let mut conn = raw_conn(&path)?;
                    let started = Instant::now();
                    let done = raw_drain(&mut conn, Some(k), |_| {})?;
                    ensure!(done == k, "raw loop processed {done} of {k}");
                    Ok(started.elapsed() / k as u32)
                })
                .await?;
                raw_best = raw_best.min(raw);
                let run = fw::run_poller(broker.clone(), 8, Until::Events(k), plan.limit).await?;
                let fw = run.to_nth.context("the poller stopped early")? / k as u32;
                fw_best = fw_best.min(fw);
            }
            drop(raw_db);
            Ok::<_, anyhow::Error>((fw_best, raw_best))
        }
        .await
        .map(|(fw, raw)| {
            let row = Row::new(B, &what)
                .framework(fmt_us(fw))
                .baseline(format!("rusqlite claim+delete loop: {}", fmt_us(raw)))
                .ratio(fw.as_secs_f64() / raw.as_secs_f64());
            scale_target(&plan.scale_sizes, idx, &mut first, fw, row)
        });
        report.push_result(B, &what, r);
    }
}

async fn two_pollers(plan: &Plan, dir: &Path) -> anyhow::Result<(f64, f64)> {
    let n = plan.n;
    let mut rates = Vec::new();
    for procs in [1, 2] {
        let db = filled(dir, "two-pollers", n).await?;
        let specs = (0..procs)
            .map(|_| ChildSpec::fw(&db.url(), "drain", 0, "0"))
            .collect();
        let (elapsed, results) = child::run_many(plan, specs).await?;
        let done: u64 = results.iter().map(|r| r.done).sum();
        ensure!(
            done == n,
            "{procs} poller(s) completed {done} events of {n}: an event ran twice or not at all"
        );
        let left = depth(&db).await?;
        ensure!(left == 0, "{left} events left after the drain");
        rates.push(rate(n, elapsed));
    }
    Ok((rates[0], rates[1]))
}
