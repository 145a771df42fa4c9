//! `poller status`: the pollers of this machine from their PID files; then
//! the live pollers the broker knows (RabbitMQ and PostgreSQL: of every
//! machine; SQLite: of the file, whether they have a PID file or not); the paused queues (`Paused queues: low`, or `none`); then
//! each periodic event with its schedule, the last tick queued and the
//! next tick.

use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::{BrokerArg, Failed, PidDirArg};
use crate::poller::pidfile;
use crate::{broker, periodic, redact_url};

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) broker: BrokerArg,

    #[command(flatten)]
    pub(super) pid_dir: PidDirArg,
}

pub(super) async fn run(args: &StatusArgs) -> Result<(), Failed> {
    pid_file_status(&args.pid_dir.pid_dir);
    broker_status(args).await;
    periodic_status(args).await;
    Ok(())
}

/// Each periodic event of this binary: its schedule, the last tick queued
/// (as the broker records it) and the next tick.
async fn periodic_status(args: &StatusArgs) {
    let Ok(registry) = crate::registry() else {
        return;
    };
    let events: Vec<_> = registry
        .events()
        .filter_map(|e| e.periodic.as_ref().map(|p| (e, p)))
        .collect();
    if events.is_empty() {
        return;
    }
    let url = broker::resolve_url(args.broker.broker.as_deref());
    // A SQLite file that does not exist has no ticks: not created here.
    let missing_file = url
        .strip_prefix("sqlite://")
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .is_some_and(|path| !Path::new(path).exists());
    let ask = async {
        if missing_file {
            return Ok(Default::default());
        }
        broker::connect(&url).await?.tick_last().await
    };
    let last = match tokio::time::timeout(STATUS_BOUND, ask).await {
        Ok(Ok(last)) => Some(last),
        Ok(Err(e)) => {
            eprintln!("warning: cannot read the last periodic ticks: {e}");
            None
        }
        Err(_) => {
            eprintln!(
                "warning: cannot read the last periodic ticks: {} did not answer within {}",
                redact_url(&url),
                humantime::format_duration(STATUS_BOUND)
            );
            None
        }
    };
    println!();
    println!("Periodic events:");
    println!(
        "{:<24} {:<8} {:<44} {:<22} NEXT TICK",
        "EVENT", "QUEUE", "SCHEDULE", "LAST TICK QUEUED"
    );
    let now = i64::try_from(crate::envelope::now_ms()).unwrap_or(i64::MAX);
    for (event, periodic) in events {
        let last_tick = last.as_ref().and_then(|l| l.get(event.name).copied());
        let shown_last = match (&last, last_tick) {
            (None, _) => "?".to_string(),
            (Some(_), None) => "never".to_string(),
            (Some(_), Some(t)) => periodic::format_tick(t),
        };
        let next = periodic
            .schedule
            .next_after(now)
            .map(periodic::format_tick)
            .unwrap_or_else(|| "none".to_string());
        let mut schedule = periodic.schedule.to_string();
        if periodic.missed == periodic::Missed::Skip {
            schedule.push_str(", missed: skip");
        }
        println!(
            "{:<24} {:<8} {:<44} {:<22} {}",
            event.name, event.queue, schedule, shown_last, next
        );
    }
}

/// How long `status` waits for the broker before it gives up on the
/// cross-machine table.
const STATUS_BOUND: Duration = Duration::from_secs(5);
/// How long `status` waits for the broker's health check (RabbitMQ: one
/// request to the management API).
const HEALTH_BOUND: Duration = Duration::from_secs(2);
/// How long `status` collects the pollers' answers.
const STATUS_WAIT: Duration = Duration::from_millis(1500);

/// The live pollers of every machine, when the broker offers that view.
/// Bounded by [`STATUS_BOUND`]; a broker that does not answer is a one-line
/// warning, not an error: the PID-file table is printed already.
async fn broker_status(args: &StatusArgs) {
    let url = broker::resolve_url(args.broker.broker.as_deref());
    // A SQLite file that does not exist has no pollers and no paused
    // queues: it is not created here.
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        if !Path::new(path).exists() {
            return;
        }
    }
    let ask = async {
        let b = broker::connect(&url).await?;
        let paused = super::pause::paused_line(&*b).await;
        // Bounded on its own, so a slow management API cannot cost the
        // pollers' table its share of STATUS_BOUND.
        let health = match tokio::time::timeout(HEALTH_BOUND, b.broker_health()).await {
            Ok(h) => h.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(HEALTH_BOUND)
            )),
        };
        b.pollers(STATUS_WAIT).await.map(|p| (p, paused, health))
    };
    let pollers = match tokio::time::timeout(STATUS_BOUND, ask).await {
        Ok(Ok((pollers, paused, health))) => {
            match paused {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("warning: cannot tell which queues are paused: {e}"),
            }
            print_health(health);
            match pollers {
                Some(p) => p,
                None => return,
            }
        }
        Ok(Err(e)) => {
            eprintln!("warning: cannot list the pollers of other machines: {e}");
            return;
        }
        Err(_) => {
            eprintln!(
                "warning: cannot list the pollers of other machines: {} did not answer within {}",
                redact_url(&url),
                humantime::format_duration(STATUS_BOUND)
            );
            return;
        }
    };
    println!();
    println!("Pollers on {}:", redact_url(&url));
    if pollers.is_empty() {
        println!("(none answered)");
        return;
    }
    println!(
        "{:<8} {:<16} {:<8} {:<24} {:<5} IN-FLIGHT",
        "ID", "HOST", "PID", "QUEUES", "CONC"
    );
    let mut pollers = pollers;
    pollers.sort_by(|a, b| (&a.host, &a.id, a.pid).cmp(&(&b.host, &b.id, b.pid)));
    for p in pollers {
        let mut in_flight = p.in_flight.len().to_string();
        if !p.in_flight.is_empty() {
            let events: Vec<String> = p
                .in_flight
                .iter()
                .map(|e| format!("{}:{}", e.name, e.id))
                .collect();
            in_flight = format!("{in_flight}: {}", events.join(", "));
        }
        println!(
            "{:<8} {:<16} {:<8} {:<24} {:<5} {}",
            p.id,
            p.host,
            p.pid,
            p.queues.join(","),
            p.concurrency,
            in_flight
        );
    }
}

/// The broker's own health (RabbitMQ quorum queues: stalled dead-lettering):
/// each warning on stdout, beside the tables it concerns; notes too.
fn print_health(health: Result<Option<broker::BrokerHealth>, String>) {
    match health {
        Ok(Some(h)) => {
            for w in &h.warnings {
                println!("WARNING: {w}");
            }
            for n in &h.notes {
                println!("note: {n}");
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("warning: cannot check the broker's health: {e}"),
    }
}

/// The pollers of this machine, from the PID files.
fn pid_file_status(dir: &Path) {
    let rows = pidfile::list_pollers(dir);
    if rows.is_empty() {
        println!("No pollers in {}", dir.display());
        return;
    }
    println!(
        "{:<8} {:<8} {:<6} {:<24} {:<5} BROKER",
        "ID", "PID", "ALIVE", "QUEUES", "CONC"
    );
    for r in rows {
        let (queues, conc, broker) = match &r.info {
            Some(i) => (
                i.queues.join(","),
                i.concurrency.to_string(),
                i.broker.clone(),
            ),
            None => ("?".into(), "?".into(), "?".into()),
        };
        println!(
            "{:<8} {:<8} {:<6} {:<24} {:<5} {}",
            r.id,
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            if r.alive { "yes" } else { "no" },
            queues,
            conc,
            broker
        );
    }
}
