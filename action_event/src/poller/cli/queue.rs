//! `poller queue NAME key=value ...`: queues one event from the shell.

use clap::Args;

use super::{BrokerArg, Failed, misuse};
use crate::broker;
use crate::client::{Client, QueueRequest};
use crate::{Envelope, Error};

#[derive(Debug, Args)]
pub(super) struct QueueArgs {
    /// The event name.
    pub(super) name: String,
    /// `key=value` params; a value that parses as JSON is JSON, else a
    /// string. `queue=`, `delay=` (e.g. 10s) and `at=` (e.g.
    /// 2026-12-01T09:00:00Z) are reserved.
    pub(super) params: Vec<String>,

    #[command(flatten)]
    pub(super) broker: BrokerArg,
}

pub(super) async fn run(args: &QueueArgs) -> Result<(), Failed> {
    let envelope = envelope(&args.name, &args.params)?;
    let url = broker::resolve_url(args.broker.broker.as_deref());
    let client = Client::connect(&url).await?;
    client.broker().publish(&envelope).await?;
    println!(
        "Queued {} on {}: {} ({})",
        envelope.name,
        envelope.queue,
        envelope.id,
        envelope.params_json()
    );
    Ok(())
}

/// The event the command line describes. What the user typed wrong (a
/// param that is not `key=value`, a bad time or delay, params that do not
/// fit the event) is a usage error.
fn envelope(name: &str, params: &[String]) -> Result<Envelope, clap::Error> {
    let usage = |message: String| {
        misuse(
            &["queue"],
            Error::Queue {
                event: name.to_string(),
                message,
            },
        )
    };
    let mut req = QueueRequest::new(name);
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            return Err(usage(format!(
                "param `{p}` is not `key=value` (write e.g. `name=world`)"
            )));
        };
        req = match k {
            "queue" => req.queue(v),
            "delay" => req.delay_str(v),
            "at" => match humantime::parse_rfc3339_weak(v) {
                Ok(t) => req.at(t),
                Err(e) => {
                    return Err(usage(format!(
                        "bad time `{v}`: {e} (write e.g. 2026-12-01T09:00:00Z)"
                    )));
                }
            },
            _ => match serde_json::from_str::<serde_json::Value>(v) {
                Ok(json) => req.param(k, json),
                Err(_) => req.param(k, v),
            },
        };
    }
    req.into_envelope().map_err(|e| misuse(&["queue"], e))
}
