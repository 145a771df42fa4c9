//! Paused queues: the table `paused_queues`, one row per paused queue.
//!
//! The table is created (`IF NOT EXISTS`) whenever a file is opened, with
//! no schema version bump: a file written by an older build gains it on
//! the first open by this one, and an older build ignores it (it would not
//! honour the pauses). Pausing inserts the row, resuming deletes it; both
//! commit before they return, so the state survives any crash and every
//! process on the machine sees it. `take` reads the table at most every
//! 250 ms per broker handle (the shared pause cache), and when it sees
//! a queue paused it gives back at once the events it claimed ahead from
//! that queue ([`super::ahead`]).

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteBroker, ahead, now_i64};
use crate::Error;
use crate::broker::Delivery;
use crate::broker::paused::{Pausable, PauseCache, check_name};

/// Run at every open, inside the schema transaction.
pub(super) const TABLE: &str = "CREATE TABLE IF NOT EXISTS paused_queues (
    queue      TEXT PRIMARY KEY,
    paused_at  INTEGER NOT NULL
);";

pub(super) async fn pause(broker: &SqliteBroker, queue: &str, paused: bool) -> Result<(), Error> {
    check_name(&broker.inner.url, queue)?;
    let q = queue.to_string();
    broker
        .run(move |inner, state| {
            let res = if paused {
                state.conn.execute(
                    "INSERT INTO paused_queues (queue, paused_at) VALUES (?1, ?2) \
                     ON CONFLICT (queue) DO NOTHING",
                    params![q, now_i64()],
                )
            } else {
                state
                    .conn
                    .execute("DELETE FROM paused_queues WHERE queue = ?1", params![q])
            };
            res.map_err(|e| {
                inner.err(
                    if paused {
                        "pause queue"
                    } else {
                        "resume queue"
                    },
                    e,
                )
            })?;
            Ok(())
        })
        .await?;
    broker.paused.note(queue, paused);
    if paused {
        broker.now_paused(&[queue.to_string()]).await;
    }
    Ok(())
}

pub(super) async fn list(broker: &SqliteBroker) -> Result<Vec<String>, Error> {
    broker
        .run(|inner, state| {
            let mut stmt = state
                .conn
                .prepare_cached("SELECT queue FROM paused_queues ORDER BY queue")
                .map_err(|e| inner.err("list paused queues", e))?;
            stmt.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| inner.err("list paused queues", e))
        })
        .await
}

#[async_trait]
impl Pausable for SqliteBroker {
    fn pause_cache(&self) -> &PauseCache {
        &self.paused
    }

    async fn load_paused(
        &self,
        _queues: &[String],
    ) -> Result<(BTreeSet<String>, Option<BTreeSet<String>>), Error> {
        Ok((list(self).await?.into_iter().collect(), None))
    }

    async fn now_paused(&self, queues: &[String]) {
        let queues = queues.to_vec();
        let res = self
            .run(move |inner, state| {
                ahead::unclaim_ahead(inner, state, |a| queues.contains(&a.queue))
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(broker = %self.inner.url, "events claimed ahead from a paused queue not given back (they come back within a second): {e}");
        }
    }

    async fn take_from(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<Delivery>, Error> {
        super::claim::take(self, queues, wait).await
    }

    async fn put_back(&self, delivery: &Delivery) -> Result<(), Error> {
        super::settle::release(self, delivery).await
    }
}
