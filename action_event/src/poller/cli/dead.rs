//! `poller dead list|show|retry|purge`: the dead letters, for a person to
//! read, fix and retry, or purge.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Failed, misuse, parse_duration};
use crate::Error;
use crate::broker::{self, DeadFilter};
use crate::envelope::now_ms;

#[derive(Debug, Args)]
pub(super) struct DeadArgs {
    #[command(subcommand)]
    command: DeadCommand,

    /// Broker URL (default: $ACTION_EVENT_URL, else sqlite://action_event.db).
    #[arg(long, global = true)]
    broker: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// List dead events, oldest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this event name.
        #[arg(long)]
        event: Option<String>,
    },
    /// Show one dead event with every error.
    Show {
        /// Its id.
        id: String,
    },
    /// Put dead events back on their queues with a fresh attempt count:
    /// one id, or --all.
    Retry {
        /// One id.
        #[arg(conflicts_with = "all")]
        id: Option<String>,
        /// Every dead event (matching --queue/--event).
        #[arg(long)]
        all: bool,
        /// Only this queue (with --all).
        #[arg(long)]
        queue: Option<String>,
        /// Only this event name (with --all).
        #[arg(long)]
        event: Option<String>,
    },
    /// Delete dead events: one id, --all, or --older-than.
    Purge {
        /// One id.
        #[arg(conflicts_with_all = ["all", "older_than"])]
        id: Option<String>,
        /// Every dead event (matching the other options).
        #[arg(long)]
        all: bool,
        /// Only those that died longer ago than this, e.g. 7d.
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this event name.
        #[arg(long)]
        event: Option<String>,
    },
}

pub(super) async fn run(args: &DeadArgs) -> Result<(), Failed> {
    // The command line first: a misuse is reported before any connection.
    match &args.command {
        DeadCommand::Retry {
            id: None,
            all: false,
            ..
        } => {
            return Err(misuse(
                &["dead", "retry"],
                "give one id or --all (e.g. `poller dead retry --all --queue low`)",
            )
            .into());
        }
        DeadCommand::Purge {
            id: None,
            all: false,
            older_than: None,
            ..
        } => {
            return Err(misuse(
                &["dead", "purge"],
                "give one id, --all or --older-than (e.g. `poller dead purge --older-than 7d`)",
            )
            .into());
        }
        _ => {}
    }
    let url = broker::resolve_url(args.broker.as_deref());
    let broker = broker::connect(&url).await?;
    match &args.command {
        DeadCommand::List { queue, event } => {
            let filter = DeadFilter {
                queue: queue.clone(),
                event: event.clone(),
                died_before_ms: None,
            };
            let list = broker.dead_list(&filter).await?;
            if list.is_empty() {
                println!("No dead events");
            }
            for d in list {
                println!(
                    "{}  {}  {}  attempts={}  died={}  {}",
                    d.id,
                    d.queue,
                    d.name.as_deref().unwrap_or("?"),
                    d.attempts,
                    fmt_time(d.died_at_ms),
                    d.reason
                );
            }
        }
        DeadCommand::Show { id } => {
            let list = broker.dead_list(&DeadFilter::default()).await?;
            let d = list
                .into_iter()
                .find(|d| &d.id == id)
                .ok_or_else(|| Error::NoSuchDeadEvent(id.clone()))?;
            println!("id:       {}", d.id);
            println!("event:    {}", d.name.as_deref().unwrap_or("?"));
            println!("queue:    {}", d.queue);
            println!("attempts: {}", d.attempts);
            println!("died:     {}", fmt_time(d.died_at_ms));
            println!("reason:   {}", d.reason);
            println!("body:     {}", d.body);
            for e in &d.errors {
                println!(
                    "  attempt {} at {}: {}",
                    e.attempt,
                    fmt_time(e.at_ms),
                    e.message
                );
            }
        }
        DeadCommand::Retry {
            id, queue, event, ..
        } => {
            let filter = DeadFilter {
                queue: queue.clone(),
                event: event.clone(),
                died_before_ms: None,
            };
            let n = broker.dead_retry(id.as_deref(), &filter).await?;
            println!("Retried {n} dead event(s)");
        }
        DeadCommand::Purge {
            id,
            older_than,
            queue,
            event,
            ..
        } => {
            let filter = DeadFilter {
                queue: queue.clone(),
                event: event.clone(),
                died_before_ms: older_than.map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
            };
            let n = broker.dead_purge(id.as_deref(), &filter).await?;
            println!("Purged {n} dead event(s)");
        }
    }
    Ok(())
}

fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
