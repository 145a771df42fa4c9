//! The RabbitMQ processing rows: the in-process poller draining a backlog
//! at each concurrency against the raw lapin consumer, with each side's
//! CPU per event (this process and the node's `beam.smp`).

use anyhow::{Context as _, ensure};

use super::{B, PREFETCH, Rabbit, cleanup_prefix, fw_broker_filled, raw_consume};
use crate::cpu::{Meter, Run};
use crate::fw::{self, Until};
use crate::report::{Report, Row, Target, fmt_rate, thousands};

/// Pushes the processing rows of `r`'s plan to `report`.
pub(super) async fn rows(r: &Rabbit<'_>, report: &mut Report) {
    let plan = r.plan;
    let n = plan.n;
    eprintln!("rabbitmq: processing");
    let raw = best_of(plan.reps, || raw_drain(r)).await;
    let label = format!("lapin consumer, prefetch {PREFETCH}, decode + ack not awaited inline");
    for c in plan.concurrencies {
        let what = format!(
            "Process {} no-op, backlog in `medium`, poller serves `high medium low`, concurrency {c}",
            thousands(n)
        );
        let row = match &raw {
            Err(e) => Err(anyhow::anyhow!("baseline: {e:#}")),
            Ok(b) => {
                let baseline = format!("{label}: {}", fmt_rate(b.rate));
                match r.skipped(&what, baseline.clone()) {
                    Some(row) => Ok(row),
                    None => best_of(plan.reps, || drain(r, c)).await.map(|f| {
                        let row = Row::new(B, &what)
                            .framework(fmt_rate(f.rate))
                            .baseline(baseline)
                            .ratio(f.rate / b.rate)
                            .cpu(Some(&f.cpu), &b.cpu, label.as_str());
                        if c >= 8 {
                            row.target(Target::AtLeast(0.9))
                        } else {
                            row
                        }
                    }),
                }
            }
        };
        report.push_result(B, &what, row);
    }
}

/// Runs `f` `reps` times and keeps the best (fastest) run; the first
/// error ends it.
async fn best_of<F, Fut>(reps: usize, mut f: F) -> anyhow::Result<Run>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Run>>,
{
    let mut best = Run::default();
    for _ in 0..reps {
        best = f().await?.best(&best);
    }
    Ok(best)
}

/// The raw consumer draining a fresh backlog of `n`.
async fn raw_drain(r: &Rabbit<'_>) -> anyhow::Result<Run> {
    let n = r.plan.n;
    let q = r.raw_queue("drain").await?;
    let result = async {
        r.raw_fill(&q, n).await?;
        let meter = Meter::start(&r.server);
        let elapsed = raw_consume(&r.consume, &q, n, None).await?;
        Ok::<_, anyhow::Error>(Run::new(n, elapsed, meter.stop(n)))
    }
    .await;
    r.drop_queue(&q).await;
    result
}

/// The poller at `concurrency` draining a fresh backlog of `n`.
async fn drain(r: &Rabbit<'_>, concurrency: usize) -> anyhow::Result<Run> {
    let n = r.plan.n;
    let (broker, prefix) = fw_broker_filled(r, "drain", n).await?;
    let result = async {
        let meter = Meter::start(&r.server);
        let run =
            fw::run_poller(broker.clone(), concurrency, Until::Empty(n), r.plan.limit).await?;
        let cpu = meter.stop(n);
        ensure!(
            run.summary.completed == n,
            "the poller completed {} of {n}",
            run.summary.completed
        );
        Ok(Run::new(n, run.to_nth.context("no events ran")?, cpu))
    }
    .await;
    drop(broker);
    cleanup_prefix(&r.pch, &prefix).await;
    result
}
