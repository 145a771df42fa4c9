//! `--only web`: the dashboard's cost, on SQLite and on RabbitMQ.
//!
//! - A poller draining a backlog with the dashboard open (its page and
//!   `api/live` fetched every 500 ms, four times as often as the page polls)
//!   against the same drain without it, taking turns: within 5 %.
//! - The dashboard's pages with 100,000 waiting and 10,000 dead events:
//!   each under 200 ms (median of 10 loads, over HTTP on loopback; the
//!   queue counts are read at most once per sample interval, so the first
//!   load reads the broker and the next ones share it). `/metrics` is
//!   shown too but not judged: Prometheus scrapes it, no person waits.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use action_event::Client;
use action_event::broker::{Broker, DeadEvent};
use action_event::envelope::AttemptError;
use action_event::web::{Dashboard, axum};
use anyhow::{Context as _, ensure};
use futures_util::{StreamExt as _, TryStreamExt as _};
use rusqlite::params;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Plan;
use crate::fw::{self, Until};
use crate::report::{Report, Row, Target, fmt_rate, rate, thousands};
use crate::sqlite::{Db, blocking, filled, raw_conn};

/// Where a web row runs.
#[derive(Clone, Copy)]
pub enum Site<'a> {
    /// A new SQLite file in this directory per backlog.
    Sqlite(&'a Path),
    /// A new queue prefix on the run's RabbitMQ per backlog.
    Amqp,
}

impl Site<'_> {
    fn name(self) -> &'static str {
        match self {
            Site::Sqlite(_) => "sqlite",
            Site::Amqp => "rabbitmq",
        }
    }
}

/// A broker holding a backlog (untimed setup); its queues go with
/// [`Backlog::remove`] (RabbitMQ; a SQLite file goes when this is dropped).
struct Backlog {
    url: String,
    prefix: Option<String>,
    /// The SQLite file, deleted when this is dropped.
    _db: Option<Db>,
}

impl Backlog {
    /// `waiting` no-op events in `medium` and `dead` dead letters (each with
    /// two attempts' errors).
    async fn new(
        plan: &Plan,
        site: Site<'_>,
        tag: &str,
        waiting: u64,
        dead: u64,
    ) -> anyhow::Result<Backlog> {
        match site {
            Site::Sqlite(dir) => {
                let db = filled(dir, tag, waiting).await?;
                let path = db.path.clone();
                blocking(move || fill_dead(&path, dead)).await?;
                Ok(Backlog {
                    url: db.url(),
                    prefix: None,
                    _db: Some(db),
                })
            }
            Site::Amqp => {
                static N: AtomicU64 = AtomicU64::new(0);
                let prefix = format!(
                    "bench.{}.web-{tag}-{}.",
                    plan.run_id,
                    N.fetch_add(1, Ordering::Relaxed)
                );
                let url = crate::amqp::with_prefix(&plan.amqp_url, &prefix);
                let backlog = Backlog {
                    url,
                    prefix: Some(prefix),
                    _db: None,
                };
                let filled = async {
                    let broker = action_event::broker::connect(&backlog.url).await?;
                    fw::fill(&Client::from_broker(broker.clone()), waiting + dead, 1000).await?;
                    bury(&*broker, dead).await?;
                    tokio::time::sleep(crate::amqp::FILL_SETTLE).await;
                    Ok::<_, anyhow::Error>(())
                }
                .await;
                if let Err(e) = filled {
                    backlog.remove(plan).await;
                    return Err(e);
                }
                Ok(backlog)
            }
        }
    }

    async fn remove(&self, plan: &Plan) {
        if let Some(prefix) = &self.prefix {
            match crate::amqp::raw_connect(&plan.amqp_url, "bench-web-cleanup").await {
                Ok(conn) => {
                    if let Ok(ch) = conn.create_channel().await {
                        crate::amqp::cleanup_prefix(&ch, prefix).await;
                    }
                    let _ = conn.close(0, "done".into()).await;
                }
                Err(e) => eprintln!("  (cannot delete the queues `{prefix}*`: {e:#})"),
            }
        }
    }
}

/// Takes `n` events from `medium` and moves each to the dead letters, as
/// a poller does after the last attempt (8 at a time; untimed setup).
async fn bury(broker: &dyn Broker, n: u64) -> anyhow::Result<()> {
    let queues = ["medium".to_string()];
    let now = action_event::envelope::now_ms();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let queues = &queues;
            async move {
                let d = broker
                    .take(queues, Duration::from_secs(10))
                    .await?
                    .context("no event to bury")?;
                let env = action_event::Envelope::from_slice(&d.body)?;
                let message = format!("timeout talking to upstream #{i}");
                let dead = DeadEvent {
                    id: env.id.to_string(),
                    name: Some(env.name.clone()),
                    queue: d.queue.clone(),
                    body: String::from_utf8_lossy(&d.body).into_owned(),
                    attempts: 2,
                    errors: (1..=2)
                        .map(|attempt| AttemptError {
                            attempt,
                            at_ms: now,
                            message: message.clone(),
                        })
                        .collect(),
                    reason: "timeout talking to upstream".into(),
                    died_at_ms: now,
                };
                broker.dead(&d, &dead).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(8)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// The dashboard of `url` served on a loopback port; the address.
async fn serve(url: &str) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let broker = action_event::broker::connect(url).await?;
    let app = Dashboard::new(broker).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// One GET over a fresh connection; fails unless 200.
async fn get(addr: &str, path: &str) -> anyhow::Result<usize> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    ensure!(
        out.starts_with(b"HTTP/1.1 200"),
        "GET {path}: {}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    Ok(out.len())
}

/// Drain rate of `n` events at concurrency 8, with or without the dashboard polled.
async fn drain(
    plan: &Plan,
    site: Site<'_>,
    n: u64,
    with_dashboard: bool,
) -> anyhow::Result<(f64, u64)> {
    let tag = if with_dashboard { "open" } else { "closed" };
    let backlog = Backlog::new(plan, site, tag, n, 0).await?;
    let r = drain_backlog(plan, &backlog, n, with_dashboard).await;
    backlog.remove(plan).await;
    r
}

async fn drain_backlog(
    plan: &Plan,
    backlog: &Backlog,
    n: u64,
    with_dashboard: bool,
) -> anyhow::Result<(f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let loads = Arc::new(AtomicU64::new(0));
    let mut server = None;
    let mut refresher = None;
    if with_dashboard {
        let (addr, task) = serve(&backlog.url).await?;
        server = Some(task);
        let (stop, loads) = (stop.clone(), loads.clone());
        refresher = Some(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for path in ["/", "/api/live"] {
                    if get(&addr, path).await.is_ok() {
                        loads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    let broker = action_event::broker::connect(&backlog.url).await?;
    let run = fw::run_poller(broker, 8, Until::Empty(n), plan.limit).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(r) = refresher {
        let _ = r.await;
    }
    if let Some(s) = server {
        s.abort();
    }
    let run = run?;
    ensure!(
        run.summary.completed == n,
        "the poller completed {} of {n}",
        run.summary.completed
    );
    Ok((
        rate(n, run.to_nth.context("no events ran")?),
        loads.load(Ordering::Relaxed),
    ))
}

/// `n` dead events straight into the table (untimed setup).
fn fill_dead(path: &Path, n: u64) -> anyhow::Result<()> {
    let mut conn = raw_conn(path)?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO dead_events (event_id, name, queue, body, attempts, errors, reason, died_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let now = action_event::envelope::now_ms() as i64;
        for i in 0..n {
            let (id, body) = crate::event::body(i + 10_000_000, None)?;
            let errors = serde_json::json!([
                {"attempt": 1, "at_ms": now - 2000, "message": format!("timeout talking to upstream #{i}")},
                {"attempt": 2, "at_ms": now - 1000, "message": format!("timeout talking to upstream #{i}")},
            ])
            .to_string();
            stmt.execute(params![
                id,
                crate::event::NAME,
                "medium",
                body,
                2,
                errors,
                "timeout talking to upstream",
                now
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The SQLite rows (in a temporary directory).
pub async fn rows(plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("action_event_bench.web.")
        .tempdir()
        .context("temp dir")?;
    rows_on(plan, Site::Sqlite(dir.path()), report).await;
    Ok(())
}

/// The RabbitMQ rows (queues of their own, deleted after).
pub async fn rows_amqp(plan: &Plan, report: &mut Report) {
    rows_on(plan, Site::Amqp, report).await;
}

async fn rows_on(plan: &Plan, site: Site<'_>, report: &mut Report) {
    let b = site.name();
    eprintln!("{b}: web (drain with the dashboard open)");
    let n = plan.n;
    let what = format!(
        "Process {} no-op at concurrency 8 with the dashboard open (`/` and `/api/live` every 500 ms) vs closed",
        thousands(n)
    );
    let r = async {
        let (mut open, mut closed, mut loads) = (0f64, 0f64, 0u64);
        for _ in 0..plan.reps {
            let (c, _) = drain(plan, site, n, false).await?;
            let (o, l) = drain(plan, site, n, true).await?;
            (open, closed, loads) = (open.max(o), closed.max(c), loads + l);
        }
        Ok::<_, anyhow::Error>((open, closed, loads))
    }
    .await
    .map(|(open, closed, loads)| {
        Row::new(b, &what)
            .framework(format!("{} ({loads} page loads)", fmt_rate(open)))
            .baseline(format!("same drain, no dashboard: {}", fmt_rate(closed)))
            .ratio(open / closed)
            .target(Target::AtLeast(0.95))
    });
    report.push_result(b, &what, r);

    eprintln!("{b}: web (page loads with a big backlog)");
    let (waiting, dead) = if plan.quick {
        (3_000, 300)
    } else {
        (100_000, 10_000)
    };
    let what = format!(
        "Dashboard pages with {} waiting and {} dead (median of 10 loads each)",
        thousands(waiting),
        thousands(dead)
    );
    let r = async {
        let backlog = Backlog::new(plan, site, "pages", waiting, dead).await?;
        let r = page_loads(&backlog).await;
        backlog.remove(plan).await;
        r
    }
    .await
    .map(|(cells, worst)| {
        Row::new(b, &what)
            .framework(cells.join(", "))
            .baseline("—".to_string())
            .target(Target::Check {
                text: format!(
                    "every page < 200 ms (slowest {:.1} ms)",
                    worst.as_secs_f64() * 1000.0
                ),
                pass: worst < Duration::from_millis(200),
            })
    });
    report.push_result(b, &what, r);
}

/// The median of 10 loads of each page; the slowest median of the pages
/// (`/metrics` is shown but not judged: Prometheus scrapes it, no person
/// waits).
async fn page_loads(backlog: &Backlog) -> anyhow::Result<(Vec<String>, Duration)> {
    let (addr, server) = serve(&backlog.url).await?;
    let mut cells = Vec::new();
    let mut worst = Duration::ZERO;
    for page in [
        "/",
        "/api/live",
        "/dead",
        "/pollers",
        "/events",
        "/scheduled",
        "/metrics",
    ] {
        let is_page = page != "/metrics";
        let mut times = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            get(&addr, page).await?;
            times.push(t.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        if is_page {
            worst = worst.max(median);
        }
        cells.push(format!("`{page}` {:.1} ms", median.as_secs_f64() * 1000.0));
    }
    server.abort();
    Ok((cells, worst))
}
