//! The RabbitMQ memory rows: peak RSS of a poller process idle and after
//! draining a backlog, against the raw lapin consumer in a process of its
//! own (the bench binary's hidden `__child`).

use anyhow::ensure;

use super::{B, Rabbit, cleanup_prefix, fw_broker_filled, with_prefix};
use crate::child::{self, ChildSpec};
use crate::report::{Report, Row, Target, fmt_mb, fmt_us, thousands};

/// Pushes the memory rows of `r`'s plan to `report`.
pub(super) async fn rows(r: &Rabbit<'_>, report: &mut Report) {
    let plan = r.plan;
    let n = plan.n;
    let idle_ms = plan.idle.as_millis().to_string();
    let what = format!(
        "Poller peak RSS idle ({}s, concurrency 8, own process)",
        plan.idle.as_secs_f64()
    );
    let row = async {
        let q = r.raw_queue("mem-idle").await?;
        let raw = child::run_one(
            plan,
            ChildSpec::raw_amqp(&plan.amqp_url, &q, "idle", 0, &idle_ms),
        )
        .await;
        r.drop_queue(&q).await;
        let raw = raw?;
        let baseline = format!(
            "lapin consumer process: {} (RSS {})",
            fmt_mb(raw.hwm_kb),
            fmt_mb(raw.rss_kb)
        );
        if let Some(row) = r.skipped(&what, baseline.clone()) {
            return Ok(row);
        }
        let (url, prefix) = r.fw_url("mem-idle");
        let fw = child::run_one(plan, ChildSpec::fw(&url, "idle", 0, &idle_ms)).await;
        cleanup_prefix(&r.pch, &prefix).await;
        let fw = fw?;
        Ok::<_, anyhow::Error>(
            Row::new(B, &what)
                .framework(format!("{} (RSS {})", fmt_mb(fw.hwm_kb), fmt_mb(fw.rss_kb)))
                .baseline(baseline)
                .ratio(fw.hwm_kb as f64 / raw.hwm_kb.max(1) as f64)
                .target(Target::AtMost(1.3)),
        )
    }
    .await;
    report.push_result(B, &what, row);

    let what = format!(
        "Poller peak RSS after draining {} (concurrency 8, own process)",
        thousands(n)
    );
    let row = async {
        let q = r.raw_queue("mem-drain").await?;
        r.raw_fill(&q, n).await?;
        let raw = child::run_one(
            plan,
            ChildSpec::raw_amqp(&plan.amqp_url, &q, "drain", n, "0"),
        )
        .await;
        r.drop_queue(&q).await;
        let raw = raw?;
        let baseline = format!(
            "lapin consumer process: {} (RSS {}; CPU {})",
            fmt_mb(raw.hwm_kb),
            fmt_mb(raw.rss_kb),
            fmt_us(raw.cpu / n as u32)
        );
        if let Some(row) = r.skipped(&what, baseline.clone()) {
            return Ok(row);
        }
        let (broker, prefix) = fw_broker_filled(r, "mem-drain", n).await?;
        drop(broker);
        let url = with_prefix(&plan.amqp_url, &prefix);
        let fw = child::run_one(plan, ChildSpec::fw(&url, "drain", n, "0")).await;
        cleanup_prefix(&r.pch, &prefix).await;
        let fw = fw?;
        ensure!(fw.done == n, "the poller drained {} of {n}", fw.done);
        let mb = fw.hwm_kb as f64 / 1024.0;
        Ok::<_, anyhow::Error>(
            Row::new(B, &what)
                .framework(format!(
                    "{} (RSS {}; CPU {})",
                    fmt_mb(fw.hwm_kb),
                    fmt_mb(fw.rss_kb),
                    fmt_us(fw.cpu / n as u32)
                ))
                .baseline(baseline)
                .ratio(fw.hwm_kb as f64 / raw.hwm_kb.max(1) as f64)
                .target(Target::Check {
                    text: "< 40 MB".into(),
                    pass: mb < 40.0,
                }),
        )
    }
    .await;
    report.push_result(B, &what, row);
}
