//! Names and idempotent declarations.
//!
//! # Topology (see `docs/wire-format.md`)
//!
//! Declared idempotently and lazily, on every (re)connect:
//! - `<prefix><queue>`: one durable queue per queue name: classic with no
//!   arguments, or `x-queue-type=quorum` with `queue_type=quorum` (see
//!   `options`, *Quorum queues*).
//! - `<prefix>dead`: durable queue of [`DeadEvent`](crate::broker::DeadEvent) JSON documents.
//! - the delay ladder (see `delay`).
//!
//! Declarations are remembered per publish *epoch* (bumped on every
//! reconnect), so a (re)connect declares again what it needs.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use lapin::Channel;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use tokio::time::Instant;

use super::connection::{OP_TIMEOUT, TopoErr, op};
use super::options::QueueType;
use super::publish::PubConn;
use super::wire::{i64_of, long_str};
use super::{Inner, lock};
use crate::Error;
use crate::broker::QueueDepth;
/// What was declared, for declaring once per epoch and deleting at the end.
pub(super) struct Topology {
    /// (publish epoch, names declared in it).
    declared: Mutex<(u64, HashSet<String>)>,
    /// Everything ever declared, for `AmqpBroker::delete_topology`: (is_exchange, name).
    all: Mutex<BTreeSet<(bool, String)>>,
}

impl Topology {
    pub(super) fn new() -> Topology {
        Topology {
            declared: Mutex::new((0, HashSet::new())),
            all: Mutex::new(BTreeSet::new()),
        }
    }

    /// Remembers a queue or exchange declared elsewhere (a consumer's
    /// queue, the status exchange), for `delete_topology`.
    pub(super) fn record(&self, is_exchange: bool, name: &str) {
        lock(&self.all).insert((is_exchange, name.to_string()));
    }
}

impl Inner {
    pub(super) fn full_name(&self, queue: &str) -> String {
        // Called on every publish: two copies, not the formatter (~1k
        // instructions a publish under callgrind).
        let mut name = String::with_capacity(self.opts.prefix.len() + queue.len());
        name.push_str(&self.opts.prefix);
        name.push_str(queue);
        name
    }

    pub(super) fn dead_name(&self) -> String {
        format!("{}dead", self.opts.prefix)
    }

    pub(super) fn status_name(&self) -> String {
        format!("{}status", self.opts.prefix)
    }

    pub(super) fn delay_name(&self, level: u64) -> String {
        format!("{}delay.{level}", self.opts.prefix)
    }

    /// Arguments of a work queue or of the dead queue: none for classic
    /// queues, `x-queue-type=quorum` for quorum ones.
    pub(super) fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.opts.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), long_str("quorum"));
        }
        args
    }

    /// Arguments of a queue whose messages expire (`ttl_ms`) and are
    /// dead-lettered through the default exchange: a delay level, a hold
    /// queue. On quorum queues the dead-lettering is at-least-once (it
    /// needs `x-overflow=reject-publish`): a node dying while it moves an
    /// expired message to its work queue loses nothing. (RabbitMQ 3.10.8 may
    /// stall such moves for good when the work queue's leader dies
    /// mid-move, until the source queue's leadership moves: see the
    /// README's *What a cluster gives* and `tests/e2e/cluster_dlx_e2e.rs`.)
    pub(super) fn expiring_args(&self, ttl_ms: u64) -> FieldTable {
        let mut args = self.queue_args();
        args.insert("x-message-ttl".into(), i64_of(ttl_ms));
        args.insert("x-dead-letter-exchange".into(), long_str(""));
        if self.opts.queue_type == QueueType::Quorum {
            args.insert("x-dead-letter-strategy".into(), long_str("at-least-once"));
            args.insert("x-overflow".into(), long_str("reject-publish"));
        }
        args
    }

    /// Declares what a publish needs, once per (re)connect.
    pub(super) async fn ensure(
        &self,
        p: &PubConn,
        queue: &str,
        level: Option<u64>,
    ) -> Result<(), TopoErr> {
        let epoch = self.publisher.epoch();
        let mut todo: Vec<(String, Option<u64>)> = Vec::new();
        {
            let mut d = lock(&self.topology.declared);
            if d.0 != epoch {
                *d = (epoch, HashSet::new());
            }
            if !d.1.contains(queue) {
                todo.push((queue.to_string(), None));
            }
            if let Some(l) = level {
                let n = self.delay_name(l);
                if !d.1.contains(&n) {
                    todo.push((n, Some(l)));
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        // A declaration that fails closes its channel: never the confirm channel.
        let ch = op("open channel", p.conn.create_channel()).await?;
        let res = async {
            for (name, level) in &todo {
                self.declare(&ch, name, *level).await?;
            }
            Ok(())
        }
        .await;
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        res?;
        let mut d = lock(&self.topology.declared);
        if d.0 == epoch {
            for (name, _) in todo {
                d.1.insert(name);
            }
        }
        Ok(())
    }

    /// Declares one queue (`level` None) or one delay level.
    pub(super) async fn declare(
        &self,
        ch: &Channel,
        name: &str,
        level: Option<u64>,
    ) -> Result<u32, TopoErr> {
        let args = match level {
            Some(l) => self.expiring_args(l),
            None => self.queue_args(),
        };
        if level.is_some() {
            op(
                "declare exchange",
                ch.exchange_declare(
                    name.into(),
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            lock(&self.topology.all).insert((true, name.to_string()));
        }
        let q = op(
            "declare queue",
            ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args),
        )
        .await?;
        lock(&self.topology.all).insert((false, name.to_string()));
        if level.is_some() {
            op(
                "bind queue",
                ch.queue_bind(
                    name.into(),
                    name.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        Ok(q.message_count())
    }

    /// See `AmqpBroker::delete_topology`.
    pub(super) async fn delete_topology(&self) -> Result<u64, Error> {
        let inner = self;
        let deadline = Instant::now() + inner.opts.publish_timeout;
        let p = inner.pub_conn(deadline).await?;
        let names: Vec<(bool, String)> = lock(&inner.topology.all).iter().cloned().collect();
        let mut n = 0;
        for (is_exchange, name) in names {
            let ch = op("open channel", p.conn.create_channel())
                .await
                .map_err(|e| inner.topo_err(e))?;
            let res = if is_exchange {
                op(
                    "delete exchange",
                    ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
                )
                .await
                .map(|_| ())
            } else {
                op(
                    "delete queue",
                    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
                )
                .await
                .map(|_| ())
            };
            let _ = ch.close(200, "OK".into()).await;
            res.map_err(|e| inner.topo_err(e))?;
            n += 1;
        }
        lock(&inner.topology.all).clear();
        lock(&inner.topology.declared).1.clear();
        Ok(n)
    }

    /// See `Broker::depth`: declaring the queue (idempotent) tells its count.
    pub(super) async fn depth(&self, queue: &str) -> Result<QueueDepth, Error> {
        let inner = self;
        let deadline = Instant::now() + inner.opts.publish_timeout;
        let p = inner.pub_conn(deadline).await?;
        let full = inner.full_name(queue);
        let ch = op("open channel", p.conn.create_channel())
            .await
            .map_err(|e| inner.topo_err(e))?;
        let res = inner.declare(&ch, &full, None).await;
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        let waiting = res.map_err(|e| inner.topo_err(e))?;
        Ok(QueueDepth {
            waiting: u64::from(waiting),
            scheduled: None,
            oldest_age: None,
        })
    }
}
