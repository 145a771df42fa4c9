//! Bulk publishing ([`Broker::publish_many`](crate::broker::Broker::publish_many)):
//! every message of the batch is put on the shared confirm channel before
//! the first confirm is awaited, so the batch costs about one round trip,
//! not one per event (the way a hand-written lapin publisher keeps all its
//! confirms in flight).
//!
//! Each message is sent like a single publish (persistent, `mandatory`,
//! through the delay ladder when `run_at_ms` is ahead). The call returns
//! `Ok` once every one is confirmed. A message nacked, or whose confirm is
//! lost in a reconnect, is published again until `publish_timeout`; one
//! returned as unroutable fails the call at once. RabbitMQ has no
//! transaction that spans confirms, so after an `Err` any part of the
//! batch may be stored: publishing the same envelopes again is safe for
//! consumers that dedupe by the envelope's `id`.

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::{Confirmation, PublisherConfirm};
use tokio::time::Instant;

use super::Inner;
use super::connection::TopoErr;
use super::delay::pick_level;
use super::wire::{envelope_properties, expiring_properties};
use crate::Error;
use crate::envelope::{Envelope, now_ms};

/// One message of a batch, ready to send again if needed.
struct Prepared {
    routing_key: String,
    level: Option<u64>,
    exchange: String,
    body: Vec<u8>,
    props: lapin::BasicProperties,
}

impl Inner {
    pub(super) async fn publish_envelopes(&self, envelopes: &[Envelope]) -> Result<(), Error> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.opts.publish_timeout;
        let now = now_ms();
        // A batch is mostly one queue: its full name is made once per run
        // of equal queues, not once per message.
        let mut last: Option<(&str, String)> = None;
        // Each message is encoded just before its first send, so RabbitMQ
        // works on the first ones while the rest are encoded.
        let mut make = |i: usize| {
            let env = &envelopes[i];
            let run_at = env.run_at_ms.filter(|r| *r > now);
            let level = run_at.map(|r| pick_level(r - now));
            let routing_key = match &last {
                Some((q, full)) if *q == env.queue => full.clone(),
                _ => {
                    let full = self.full_name(&env.queue);
                    last = Some((&env.queue, full.clone()));
                    full
                }
            };
            Prepared {
                routing_key,
                level,
                exchange: level.map(|l| self.delay_name(l)).unwrap_or_default(),
                body: env.to_bytes(),
                props: match level {
                    Some(l) => expiring_properties(envelope_properties(env.run_at_ms), l),
                    None => envelope_properties(env.run_at_ms),
                },
            }
        };
        let mut prepared: Vec<Prepared> = Vec::with_capacity(envelopes.len());
        // Indices of the messages not confirmed yet.
        let mut pending: Vec<usize> = (0..envelopes.len()).collect();
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            let last = match self
                .send_round(&mut prepared, &mut make, &mut pending, deadline)
                .await
            {
                Ok(()) => return Ok(()),
                Err(TopoErr::Fatal(e)) => return Err(self.topo_err(TopoErr::Fatal(e))),
                Err(TopoErr::Transient(m)) => m,
            };
            if Instant::now() + pause >= deadline {
                return Err(self.err(format!(
                    "bulk publish: {} of {} messages not confirmed within {:?} ({last})",
                    pending.len(),
                    envelopes.len(),
                    self.opts.publish_timeout
                )));
            }
            tracing::debug!(error = %last, left = pending.len(), "bulk publish not fully confirmed; publishing the rest again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// Publishes every message of `pending`, then awaits their confirms;
    /// leaves in `pending` those to send again. `Err(Transient)` when any
    /// is left, `Err(Fatal)` for one returned as unroutable.
    /// `prepared` holds the messages encoded so far; `make(i)` encodes
    /// message `i` the first time it is sent (`pending` is in order).
    async fn send_round(
        &self,
        prepared: &mut Vec<Prepared>,
        make: &mut (dyn FnMut(usize) -> Prepared + Send),
        pending: &mut Vec<usize>,
        deadline: Instant,
    ) -> Result<(), TopoErr> {
        let p = self
            .pub_conn(deadline)
            .await
            .map_err(|e| TopoErr::Transient(e.to_string()))?;
        let mut sent: Vec<(usize, PublisherConfirm)> = Vec::with_capacity(pending.len());
        let mut send_error = None;
        // What this round made sure is declared: checked once per
        // destination, not per message (a lock and two hashes each).
        let mut ensured: Vec<(String, Option<u64>)> = Vec::new();
        for &i in pending.iter() {
            while prepared.len() <= i {
                prepared.push(make(prepared.len()));
            }
            let m = &prepared[i];
            let fresh = !ensured
                .iter()
                .any(|(q, l)| *q == m.routing_key && *l == m.level);
            let publish = async {
                if fresh {
                    self.ensure(&p, &m.routing_key, m.level).await?;
                }
                p.confirm
                    .basic_publish(
                        m.exchange.as_str().into(),
                        m.routing_key.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &m.body,
                        m.props.clone(),
                    )
                    .await
                    .map_err(|e| TopoErr::Transient(e.to_string()))
            };
            match publish.await {
                Ok(c) => {
                    if fresh {
                        ensured.push((m.routing_key.clone(), m.level));
                    }
                    sent.push((i, c));
                }
                Err(TopoErr::Fatal(e)) => return Err(TopoErr::Fatal(e)),
                Err(TopoErr::Transient(m)) => {
                    send_error = Some(m);
                    break;
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (idx, confirms): (Vec<usize>, Vec<PublisherConfirm>) = sent.into_iter().unzip();
        let results = tokio::time::timeout(remaining, join_all(confirms))
            .await
            .map_err(|_| TopoErr::Transient("no confirm".into()))?;
        let mut confirmed = vec![
            false;
            prepared
                .len()
                .max(pending.iter().max().map_or(0, |m| m + 1))
        ];
        let mut last = send_error;
        for (i, r) in idx.into_iter().zip(results) {
            match r {
                Ok(Confirmation::Ack(None)) => confirmed[i] = true,
                Ok(Confirmation::Ack(Some(ret))) => {
                    return Err(TopoErr::Fatal(self.err(format!(
                        "message to `{}` was returned as unroutable: {} {}",
                        prepared[i].routing_key, ret.reply_code, ret.reply_text
                    ))));
                }
                Ok(Confirmation::Nack(_)) => last = Some("the broker nacked a message".into()),
                Ok(Confirmation::NotRequested) => {
                    return Err(TopoErr::Fatal(self.err("publisher confirms are not on")));
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        pending.retain(|&i| !confirmed[i]);
        match (pending.is_empty(), last) {
            (true, _) => Ok(()),
            (false, last) => Err(TopoErr::Transient(
                last.unwrap_or_else(|| "not confirmed".into()),
            )),
        }
    }
}
