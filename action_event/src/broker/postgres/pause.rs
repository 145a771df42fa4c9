//! Paused queues: the table `paused_queues` (schema version 2), one row per
//! paused queue.
//!
//! Pausing inserts the row, resuming deletes it; both commit before they
//! return, so the state is shared by every poller on every machine and
//! survives restarts. `take` reads the table at most every 250 ms per
//! broker handle (`crate::broker::paused`). When a queue is seen paused,
//! the events claimed ahead from it ([`super::ahead`]) go back at once; a
//! delivery whose queue turns out paused once in hand is released.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;

use super::{PostgresBroker, now_i64};
use crate::Error;
use crate::broker::Delivery;
use crate::broker::paused::{Pausable, PauseCache, check_name};

/// Pauses (`paused`) or resumes `queue`.
pub(super) async fn pause(broker: &PostgresBroker, queue: &str, paused: bool) -> Result<(), Error> {
    let inner = &broker.inner;
    check_name(&inner.url, queue)?;
    let s = &inner.cfg.schema;
    let res = if paused {
        sqlx::query(&format!(
            "INSERT INTO {s}.paused_queues (queue, paused_at) VALUES ($1, $2) \
             ON CONFLICT (queue) DO NOTHING"
        ))
        .bind(queue)
        .bind(now_i64())
        .execute(&inner.pool)
        .await
    } else {
        sqlx::query(&format!("DELETE FROM {s}.paused_queues WHERE queue = $1"))
            .bind(queue)
            .execute(&inner.pool)
            .await
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
    inner.paused.note(queue, paused);
    if paused {
        broker.now_paused(&[queue.to_string()]).await;
    }
    Ok(())
}

/// Every paused queue, sorted by name.
pub(super) async fn list(broker: &PostgresBroker) -> Result<Vec<String>, Error> {
    let inner = &broker.inner;
    sqlx::query_scalar(&format!(
        "SELECT queue FROM {}.paused_queues ORDER BY queue",
        inner.cfg.schema
    ))
    .fetch_all(&inner.pool)
    .await
    .map_err(|e| inner.err("list paused queues", e))
}

#[async_trait]
impl Pausable for PostgresBroker {
    fn pause_cache(&self) -> &PauseCache {
        &self.inner.paused
    }

    async fn load_paused(
        &self,
        _queues: &[String],
    ) -> Result<(BTreeSet<String>, Option<BTreeSet<String>>), Error> {
        Ok((list(self).await?.into_iter().collect(), None))
    }

    async fn now_paused(&self, queues: &[String]) {
        if let Err(e) = super::ahead::give_back_if(&self.inner, |a| queues.contains(&a.queue)).await
        {
            tracing::warn!(broker = %self.inner.url, "events claimed ahead from a paused queue not given back (they come back within a second): {e}");
        }
    }

    async fn take_from(
        &self,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<Delivery>, Error> {
        super::claim::take(&self.inner, queues, wait).await
    }

    async fn put_back(&self, delivery: &Delivery) -> Result<(), Error> {
        super::settle::release(&self.inner, self.tag(delivery)?).await
    }
}
