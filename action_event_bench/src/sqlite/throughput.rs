//! The SQLite throughput rows: enqueue (`queue!` from concurrent tasks, one
//! `queue_many` call) and processing at each concurrency, against the
//! hand-written rusqlite loops, with each side's CPU per event (the broker
//! runs in this process).

use std::path::Path;
use std::time::Instant;

use action_event::Client;
use action_event::envelope::now_ms;
use anyhow::{Context as _, ensure};
use rusqlite::params;

use super::{B, Db, RAW_INSERT, blocking, depth, filled, raw_conn, raw_drain};
use crate::Plan;
use crate::cpu::{Meter, Run, Server};
use crate::event;
use crate::fw::{self, Until};
use crate::report::{Report, Row, Target, fmt_rate, thousands};

/// Pushes the enqueue rows (when `--only` wants them) and the processing
/// rows (likewise) to `report`, working in `dir`.
pub(super) async fn rows(plan: &Plan, dir: &Path, report: &mut Report) {
    let n = plan.n;
    let floor = Target::AtLeast(0.8);
    if plan.wants("enqueue") {
        eprintln!("sqlite: enqueue");
        let what = format!(
            "Enqueue {}: `queue!` from {} tasks (durable: each returns after its commit)",
            thousands(n),
            plan.enqueue_tasks
        );
        let label = "rusqlite INSERT loop, 1 connection, 1 tx/row (the broker commits concurrent \
                     publishes together)";
        let r = best_pair(plan.reps, || enqueue(plan, dir))
            .await
            .map(|(f, b)| {
                Row::new(B, &what)
                    .framework(fmt_rate(f.rate))
                    .baseline(format!("{label}: {}", fmt_rate(b.rate)))
                    .ratio(f.rate / b.rate)
                    .target(floor.clone())
                    .cpu(Some(&f.cpu), &b.cpu, label)
            });
        report.push_result(B, &what, r);

        let what = format!(
            "Enqueue {}: one `queue_many` call (bulk: one transaction)",
            thousands(n)
        );
        let label = "rusqlite INSERT loop in one transaction, same bytes";
        let r = best_pair(plan.reps, || enqueue_bulk(plan, dir))
            .await
            .map(|(f, b)| {
                Row::new(B, &what)
                    .framework(fmt_rate(f.rate))
                    .baseline(format!("{label}: {}", fmt_rate(b.rate)))
                    .ratio(f.rate / b.rate)
                    .target(Target::AtLeast(1.0))
                    .cpu(Some(&f.cpu), &b.cpu, label)
            });
        report.push_result(B, &what, r);
    }

    if plan.wants("process") {
        eprintln!("sqlite: processing");
        // Best of `reps`, the baseline and each concurrency taking turns.
        let mut raw: anyhow::Result<Run> = Ok(Run::default());
        let mut fw: Vec<anyhow::Result<Run>> = plan
            .concurrencies
            .iter()
            .map(|_| Ok(Run::default()))
            .collect();
        for _ in 0..plan.reps {
            if let Ok(best) = &raw {
                raw = raw_drain_run(dir, n).await.map(|r| r.best(best));
            }
            for (i, c) in plan.concurrencies.iter().enumerate() {
                if let Ok(best) = &fw[i] {
                    fw[i] = drain(plan, dir, *c).await.map(|r| r.best(best));
                }
            }
        }
        let label = format!(
            "rusqlite claim+delete loop, 1 connection (same {})",
            thousands(n)
        );
        for (c, f) in plan.concurrencies.iter().zip(fw) {
            let what = format!(
                "Process {} no-op, backlog in `medium`, poller serves `high medium low`, concurrency {c}",
                thousands(n)
            );
            let r = match &raw {
                Err(e) => Err(anyhow::anyhow!("baseline: {e:#}")),
                Ok(b) => f.map(|f| {
                    Row::new(B, &what)
                        .framework(fmt_rate(f.rate))
                        .baseline(format!("{label}: {}", fmt_rate(b.rate)))
                        .ratio(f.rate / b.rate)
                        .target(floor.clone())
                        .cpu(Some(&f.cpu), &b.cpu, label.as_str())
                }),
            };
            report.push_result(B, &what, r);
        }
    }
}

/// Runs `f` (framework, baseline) `reps` times; each side's best run.
async fn best_pair<F, Fut>(reps: usize, mut f: F) -> anyhow::Result<(Run, Run)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<(Run, Run)>>,
{
    let (mut fw, mut raw) = (Run::default(), Run::default());
    for _ in 0..reps {
        let (f, r) = f().await?;
        (fw, raw) = (f.best(&fw), r.best(&raw));
    }
    Ok((fw, raw))
}

async fn enqueue(plan: &Plan, dir: &Path) -> anyhow::Result<(Run, Run)> {
    let n = plan.n;
    let fw_db = Db::fresh(dir, "enqueue-fw");
    let client = Client::connect(&fw_db.url()).await?;
    let meter = Meter::start(&Server::InProcess);
    let fw_time = fw::enqueue(&client, n, plan.enqueue_tasks).await?;
    let fw_cpu = meter.stop(n);
    drop(client);
    let stored = depth(&fw_db).await?;
    ensure!(stored == n, "queue! stored {stored} of {n}");

    let raw_db = Db::fresh(dir, "enqueue-raw");
    raw_db.create().await?;
    let path = raw_db.path.clone();
    let raw = blocking(move || {
        let bodies = (0..n)
            .map(|i| event::body(i, None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let conn = raw_conn(&path)?;
        let mut stmt = conn.prepare_cached(RAW_INSERT)?;
        let meter = Meter::start(&Server::InProcess);
        let started = Instant::now();
        for (id, body) in &bodies {
            let now = now_ms() as i64;
            stmt.execute(params![id, "medium", event::NAME, body, now, now])?;
        }
        let elapsed = started.elapsed();
        Ok(Run::new(n, elapsed, meter.stop(n)))
    })
    .await?;
    let stored = depth(&raw_db).await?;
    ensure!(stored == n, "raw loop stored {stored} of {n}");
    Ok((Run::new(n, fw_time, fw_cpu), raw))
}

/// One `queue_many` call of `n` against the raw loop inserting the same
/// bodies in one transaction: (framework, raw).
async fn enqueue_bulk(plan: &Plan, dir: &Path) -> anyhow::Result<(Run, Run)> {
    let n = plan.n;
    let fw_db = Db::fresh(dir, "bulk-fw");
    let client = Client::connect(&fw_db.url()).await?;
    let meter = Meter::start(&Server::InProcess);
    let fw_time = fw::enqueue_bulk(&client, n).await?;
    let fw_cpu = meter.stop(n);
    drop(client);
    let stored = depth(&fw_db).await?;
    ensure!(stored == n, "queue_many stored {stored} of {n}");

    let raw_db = Db::fresh(dir, "bulk-raw");
    raw_db.create().await?;
    let path = raw_db.path.clone();
    let raw = blocking(move || {
        let bodies = (0..n)
            .map(|i| event::body(i, None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut conn = raw_conn(&path)?;
        let meter = Meter::start(&Server::InProcess);
        let started = Instant::now();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(RAW_INSERT)?;
            let now = now_ms() as i64;
            for (id, body) in &bodies {
                stmt.execute(params![id, "medium", event::NAME, body, now, now])?;
            }
        }
        tx.commit()?;
        let elapsed = started.elapsed();
        Ok(Run::new(n, elapsed, meter.stop(n)))
    })
    .await?;
    let stored = depth(&raw_db).await?;
    ensure!(stored == n, "raw loop stored {stored} of {n}");
    Ok((Run::new(n, fw_time, fw_cpu), raw))
}

/// The raw loop draining a fresh backlog of `n`.
async fn raw_drain_run(dir: &Path, n: u64) -> anyhow::Result<Run> {
    let db = filled(dir, "raw-drain", n).await?;
    let path = db.path.clone();
    let (done, run) = blocking(move || {
        let mut conn = raw_conn(&path)?;
        let meter = Meter::start(&Server::InProcess);
        let started = Instant::now();
        let done = raw_drain(&mut conn, None, |_| {})?;
        let elapsed = started.elapsed();
        Ok((done, Run::new(n, elapsed, meter.stop(n))))
    })
    .await?;
    ensure!(done == n, "raw loop drained {done} of {n}");
    Ok(run)
}

async fn drain(plan: &Plan, dir: &Path, concurrency: usize) -> anyhow::Result<Run> {
    let n = plan.n;
    let db = filled(dir, "drain-fw", n).await?;
    let broker = action_event::broker::connect(&db.url()).await?;
    let meter = Meter::start(&Server::InProcess);
    let run = fw::run_poller(broker, concurrency, Until::Empty(n), plan.limit).await?;
    let cpu = meter.stop(n);
    ensure!(
        run.summary.completed == n && run.probe.done() == n,
        "the poller completed {} of {n}",
        run.summary.completed
    );
    let left = depth(&db).await?;
    ensure!(left == 0, "{left} events left after the drain");
    Ok(Run::new(n, run.to_nth.context("no events ran")?, cpu))
}
