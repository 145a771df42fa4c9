//! The `procs` rows: draining in processes of their own, as deployed. The
//! poller side is the poller binary's own path (`poller::main_with_args`:
//! its runtime from `--threads`, its default INFO log written to a file);
//! the baselines are the raw lapin consumer on a current-thread runtime
//! and on a multi-thread one. Each cell shows the CPU (user + system) of
//! its process per event too; the broker's is in the CPU table.

use std::time::Duration;

use anyhow::{Context as _, ensure};

use super::{B, PREFETCH, Rabbit, fw_broker_filled, with_prefix};
use crate::child::{self, ChildResult, ChildSpec};
use crate::cpu::Cpu;
use crate::report::{Report, Row, Target, fmt_rate, fmt_us, rate, thousands};

/// A drain's rate and CPU per event (the child's; `each`: its and the
/// broker's, for the CPU table).
#[derive(Clone, Default)]
struct Drain {
    rate: f64,
    cpu: Duration,
    each: Cpu,
}

impl Drain {
    fn of(r: &ChildResult, n: u64, each: Cpu) -> Drain {
        Drain {
            rate: rate(n, r.elapsed),
            cpu: r.cpu / n.max(1) as u32,
            each,
        }
    }
    fn best(self, other: &Drain) -> Drain {
        if other.rate > self.rate {
            other.clone()
        } else {
            self
        }
    }
    fn cell(&self) -> String {
        format!("{} (CPU {})", fmt_rate(self.rate), fmt_us(self.cpu))
    }
}

async fn raw(r: &Rabbit<'_>, threads: usize) -> anyhow::Result<Drain> {
    let n = r.plan.n;
    let q = r.raw_queue("proc-drain").await?;
    let result = async {
        r.raw_fill(&q, n).await?;
        child::run_metered(
            r.plan,
            ChildSpec::raw_amqp(&r.plan.amqp_url, &q, "drain", n, "0").threads(threads),
            &r.server,
            n,
        )
        .await
    }
    .await;
    r.drop_queue(&q).await;
    let (res, each) = result?;
    ensure!(res.done == n, "the raw consumer took {} of {n}", res.done);
    Ok(Drain::of(&res, n, each))
}

async fn poller(r: &Rabbit<'_>, concurrency: usize, threads: usize) -> anyhow::Result<Drain> {
    let n = r.plan.n;
    let (broker, prefix) = fw_broker_filled(r, "proc-drain", n).await?;
    drop(broker);
    let url = with_prefix(&r.plan.amqp_url, &prefix);
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("poller.log");
    let result = child::run_metered(
        r.plan,
        ChildSpec::poller(&url, n, concurrency, &log).threads(threads),
        &r.server,
        n,
    )
    .await;
    super::cleanup_prefix(&r.pch, &prefix).await;
    let (res, each) = result?;
    ensure!(res.done == n, "the poller ran {} of {n}", res.done);
    // The INFO log really was written: a `Finished processing` line per event.
    let text = std::fs::read_to_string(&log).context("reading the poller's log")?;
    let finished = text.matches("Finished processing").count() as u64;
    ensure!(
        finished >= n,
        "the log has {finished} `Finished processing` lines, not {n}"
    );
    Ok(Drain::of(&res, n, each))
}

pub(super) async fn rows(r: &Rabbit<'_>, report: &mut Report) {
    let plan = r.plan;
    let n = plan.n;
    // Baselines and pollers take turns, `reps` times; each keeps its best.
    let mut ct = Ok(Drain::default());
    let mut mt = Ok(Drain::default());
    let variants: Vec<(usize, usize)> = [8, 64].iter().flat_map(|&c| [(c, 1), (c, 2)]).collect();
    let mut fw: Vec<anyhow::Result<Drain>> =
        variants.iter().map(|_| Ok(Drain::default())).collect();
    for _ in 0..plan.reps {
        if let Ok(best) = &ct {
            ct = raw(r, 1).await.map(|d| d.best(best));
        }
        if let Ok(best) = &mt {
            mt = raw(r, 0).await.map(|d| d.best(best));
        }
        if r.fw_skip.is_some() {
            continue;
        }
        for (i, &(c, t)) in variants.iter().enumerate() {
            if let Ok(best) = &fw[i] {
                fw[i] = poller(r, c, t).await.map(|d| d.best(best));
            }
        }
    }
    for (i, &(c, t)) in variants.iter().enumerate() {
        let (base, base_name, target) = if t == 1 {
            (&ct, "current-thread runtime", 0.9)
        } else {
            (&mt, "multi-thread runtime (a worker per CPU)", 1.0)
        };
        let what = format!(
            "Process {} no-op in own processes, poller binary `--concurrency {c} --threads {t}` \
             with INFO log to a file",
            thousands(n)
        );
        let row = match base {
            Err(e) => Err(anyhow::anyhow!("baseline: {e:#}")),
            Ok(b) => {
                let label = format!(
                    "lapin consumer process, {base_name}, prefetch {PREFETCH}, ack spawned"
                );
                let baseline = format!("{label}: {}", b.cell());
                match r.skipped(&what, baseline.clone()) {
                    Some(row) => Ok(row),
                    None => match &fw[i] {
                        Err(e) => Err(anyhow::anyhow!("{e:#}")),
                        Ok(f) => Ok(Row::new(B, &what)
                            .framework(f.cell())
                            .baseline(baseline)
                            .ratio(f.rate / b.rate)
                            .target(Target::AtLeast(target))
                            .cpu(Some(&f.each), &b.each, label)),
                    },
                }
            }
        };
        report.push_result(B, &what, row);
    }
}
