//! `poller pause QUEUE...` and `poller resume QUEUE...`: stop and restart
//! the taking of a queue's events by every poller on every machine.
//!
//! The pause is kept in the broker ([`Broker::pause_queue`]): pollers see
//! it within 250 ms (those started later too), finish the events they are
//! running, and start none of that queue's events until `poller resume`;
//! events queued meanwhile wait, nothing is lost; the other queues keep
//! their strict priority.
//!
//! A queue name this app does not know is refused (exit 2) with the list
//! of the queues it knows: `high`, `medium`, `low`, the queues its events
//! name, and (SQLite) every queue that holds events. A mistyped name would
//! otherwise pause nothing while the operator believes a queue is stopped.
//! `--force` pauses such a queue anyway (e.g. one that only the next
//! release's events name). Resuming a paused queue always works, whatever
//! its name.
//!
//! [`Broker::pause_queue`]: crate::broker::Broker::pause_queue

use std::collections::BTreeSet;

use clap::Args;

use super::{BrokerArg, Failed, misuse};
use crate::broker::{self, Broker};
use crate::poller::DEFAULT_QUEUES;

#[derive(Debug, Args)]
pub(super) struct PauseArgs {
    /// The queues (one or more names).
    #[arg(required = true)]
    pub(super) queues: Vec<String>,

    /// Pause a queue even if no event of this app names it.
    #[arg(long)]
    pub(super) force: bool,

    #[command(flatten)]
    pub(super) broker: BrokerArg,
}

#[derive(Debug, Args)]
pub(super) struct ResumeArgs {
    /// The queues (one or more names).
    #[arg(required = true)]
    pub(super) queues: Vec<String>,

    #[command(flatten)]
    pub(super) broker: BrokerArg,
}

/// The queues this app knows: the defaults, those its events name and
/// (where the broker can list them) those that hold events.
pub(super) async fn known_queues(b: &dyn Broker) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = DEFAULT_QUEUES.iter().map(|q| q.to_string()).collect();
    if let Ok(registry) = crate::registry() {
        known.extend(registry.events().map(|e| e.queue.to_string()));
    }
    if let Ok(Some(listed)) = b.queues_with_events().await {
        known.extend(listed);
    }
    known
}

pub(super) async fn pause(args: &PauseArgs) -> Result<(), Failed> {
    let url = broker::resolve_url(args.broker.broker.as_deref());
    let b = broker::connect(&url).await?;
    if !args.force {
        let known = known_queues(&*b).await;
        let unknown: Vec<&String> = args.queues.iter().filter(|q| !known.contains(*q)).collect();
        if !unknown.is_empty() {
            let names: Vec<&str> = unknown.iter().map(|q| q.as_str()).collect();
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            return Err(misuse(
                &["pause"],
                format!(
                    "no event of this app names queue `{}`; the queues it knows are: {}. Check the spelling, or pause it anyway with --force",
                    names.join("`, `"),
                    known.join(", ")
                ),
            )
            .into());
        }
    }
    for q in &args.queues {
        b.pause_queue(q).await?;
        println!(
            "Paused queue {q} on {}: pollers start none of its events until `poller resume {q}`",
            b.url()
        );
    }
    Ok(())
}

pub(super) async fn resume(args: &ResumeArgs) -> Result<(), Failed> {
    let url = broker::resolve_url(args.broker.broker.as_deref());
    let b = broker::connect(&url).await?;
    let paused = b.paused_among(&args.queues).await?;
    for q in &args.queues {
        b.resume_queue(q).await?;
        if paused.contains(q) {
            println!("Resumed queue {q} on {}", b.url());
        } else {
            println!("Queue {q} was not paused on {}: nothing to do", b.url());
        }
    }
    Ok(())
}

/// The `Paused queues:` line of `poller status`.
pub(super) async fn paused_line(b: &dyn Broker) -> Result<String, crate::Error> {
    let mut ask: BTreeSet<String> = known_queues(b).await;
    ask.extend(b.paused_queues().await?);
    let ask: Vec<String> = ask.into_iter().collect();
    let paused = b.paused_among(&ask).await?;
    Ok(if paused.is_empty() {
        "Paused queues: none".to_string()
    } else {
        format!("Paused queues: {}", paused.join(", "))
    })
}
