//! The RabbitMQ enqueue rows: `queue!` from concurrent tasks and one
//! `queue_many` call, against raw lapin publishing the same bytes (with
//! every confirm in flight, with as many as the callers keep, and with
//! `mandatory` as the library publishes).

use std::time::Instant;

use action_event::Client;
use anyhow::ensure;

use super::{B, Rabbit, cleanup_prefix, declare, raw_publish_flagged};
use crate::cpu::{Meter, Run};
use crate::report::{Report, Row, Target, fmt_rate, thousands};
use crate::{event, fw};

/// Pushes the enqueue rows of `r`'s plan to `report`.
pub(super) async fn rows(r: &Rabbit<'_>, report: &mut Report) {
    let plan = r.plan;
    let n = plan.n;
    eprintln!("rabbitmq: enqueue");
    let what = format!(
        "Enqueue {}: `queue!` from {} tasks (persistent, confirmed)",
        thousands(n),
        plan.enqueue_tasks
    );
    let mut raw: anyhow::Result<Run> = Ok(Run::default());
    let mut raw_window: anyhow::Result<Run> = Ok(Run::default());
    let mut fw: anyhow::Result<Run> = Ok(Run::default());
    let tasks = usize::try_from(plan.enqueue_tasks).unwrap_or(usize::MAX);
    for _ in 0..plan.reps {
        if let Ok(best) = &raw {
            raw = raw_enqueue_rate(r, usize::MAX).await.map(|x| x.best(best));
        }
        if let Ok(best) = &raw_window {
            raw_window = raw_enqueue_rate(r, tasks).await.map(|x| x.best(best));
        }
        if r.fw_skip.is_none()
            && let Ok(best) = &fw
        {
            fw = fw_enqueue_rate(r).await.map(|x| x.best(best));
        }
    }
    let all_in_flight = format!(
        "lapin publish, all {} confirms in flight, same bytes",
        thousands(n)
    );
    let row = rate_row(
        r,
        &what,
        &fw,
        &raw,
        Some(Target::AtLeast(0.9)),
        &all_in_flight,
    );
    report.push_result(B, &what, row);

    // What 64 callers can reach at all: the same bytes with as many
    // confirms in flight as there are callers (the broker confirms
    // after each fsync, for what is in flight then).
    let what_window = format!(
        "Enqueue {}: `queue!` from {} tasks vs raw with as many confirms in flight",
        thousands(n),
        plan.enqueue_tasks
    );
    let label = format!(
        "lapin publish, {} confirms in flight, same bytes",
        plan.enqueue_tasks
    );
    let row = rate_row(r, &what_window, &fw, &raw_window, None, &label);
    report.push_result(B, &what_window, row);

    let what = format!(
        "Enqueue {}: one `queue_many` call (bulk: every confirm in flight, returns when all are confirmed)",
        thousands(n)
    );
    let mut bulk: anyhow::Result<Run> = Ok(Run::default());
    let mut raw_mandatory: anyhow::Result<Run> = Ok(Run::default());
    for _ in 0..plan.reps {
        if r.fw_skip.is_none()
            && let Ok(best) = &bulk
        {
            bulk = fw_bulk_rate(r).await.map(|x| x.best(best));
        }
        if let Ok(best) = &raw_mandatory {
            raw_mandatory = raw_enqueue_rate_flagged(r, usize::MAX, true)
                .await
                .map(|x| x.best(best));
        }
    }
    let row = rate_row(
        r,
        &what,
        &bulk,
        &raw,
        Some(Target::AtLeast(1.0)),
        &all_in_flight,
    );
    report.push_result(B, &what, row);

    // The same call beside raw publishing with `mandatory` set, as the
    // library publishes (an unroutable event fails its call instead of
    // vanishing): what that flag costs the broker is measured, not
    // judged, here.
    let what_mandatory = format!(
        "Enqueue {}: one `queue_many` call vs raw publishing `mandatory` like the library",
        thousands(n)
    );
    let label = format!(
        "lapin publish, `mandatory`, all {} confirms in flight, same bytes",
        thousands(n)
    );
    let row = rate_row(r, &what_mandatory, &bulk, &raw_mandatory, None, &label);
    report.push_result(B, &what_mandatory, row);
}

/// A row of action_event's run `fw` against the baseline's `raw` (named
/// `label`), judged by `target` when given; an error of either side is the
/// row's.
fn rate_row(
    r: &Rabbit<'_>,
    what: &str,
    fw: &anyhow::Result<Run>,
    raw: &anyhow::Result<Run>,
    target: Option<Target>,
    label: &str,
) -> anyhow::Result<Row> {
    let b = raw.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let baseline = format!("{label}: {}", fmt_rate(b.rate));
    if let Some(row) = r.skipped(what, baseline.clone()) {
        return Ok(row);
    }
    let f = fw.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let row = Row::new(B, what)
        .framework(fmt_rate(f.rate))
        .baseline(baseline)
        .ratio(f.rate / b.rate)
        .cpu(Some(&f.cpu), &b.cpu, label);
    Ok(match target {
        Some(t) => row.target(t),
        None => row,
    })
}

/// Raw lapin publishing `n` bodies with up to `window` confirms in flight.
async fn raw_enqueue_rate(r: &Rabbit<'_>, window: usize) -> anyhow::Result<Run> {
    raw_enqueue_rate_flagged(r, window, false).await
}

/// [`raw_enqueue_rate`] with `mandatory` as asked.
async fn raw_enqueue_rate_flagged(
    r: &Rabbit<'_>,
    window: usize,
    mandatory: bool,
) -> anyhow::Result<Run> {
    let n = r.plan.n;
    let q = r.raw_queue("enqueue").await?;
    let bodies = (0..n)
        .map(|i| event::body(i, None).map(|(_, b)| b.into_bytes()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let meter = Meter::start(&r.server);
    let started = Instant::now();
    raw_publish_flagged(&r.pch, &q, &bodies, window, mandatory).await?;
    let elapsed = started.elapsed();
    let raw = Run::new(n, elapsed, meter.stop(n));
    let stored = declare(&r.pch, &q).await?;
    r.drop_queue(&q).await;
    ensure!(u64::from(stored) == n, "raw publish stored {stored} of {n}");
    Ok(raw)
}

/// `n` `queue!` calls from concurrent tasks.
async fn fw_enqueue_rate(r: &Rabbit<'_>) -> anyhow::Result<Run> {
    let n = r.plan.n;
    let (url, prefix) = r.fw_url("enqueue");
    let client = Client::connect(&url).await?;
    let result = async {
        let meter = Meter::start(&r.server);
        let elapsed = fw::enqueue(&client, n, r.plan.enqueue_tasks).await?;
        let cpu = meter.stop(n);
        let waiting = client.broker().depth("medium").await?.waiting;
        ensure!(waiting == n, "queue! stored {waiting} of {n}");
        Ok(Run::new(n, elapsed, cpu))
    }
    .await;
    drop(client);
    cleanup_prefix(&r.pch, &prefix).await;
    result
}

/// One `queue_many` call of `n` events.
async fn fw_bulk_rate(r: &Rabbit<'_>) -> anyhow::Result<Run> {
    let n = r.plan.n;
    let (url, prefix) = r.fw_url("bulk");
    let client = Client::connect(&url).await?;
    let result = async {
        let meter = Meter::start(&r.server);
        let elapsed = fw::enqueue_bulk(&client, n).await?;
        let cpu = meter.stop(n);
        let waiting = client.broker().depth("medium").await?.waiting;
        ensure!(waiting == n, "queue_many stored {waiting} of {n}");
        Ok(Run::new(n, elapsed, cpu))
    }
    .await;
    drop(client);
    cleanup_prefix(&r.pch, &prefix).await;
    result
}
