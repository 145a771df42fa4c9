//! Storing events: one, many, or in the app's own transaction.
//!
//! Every insert is one statement over arrays (`INSERT .. SELECT * FROM
//! UNNEST($1, ..)`): a bulk publish of thousands of events is one round
//! trip and one commit. An event id already stored is not stored twice
//! (`ON CONFLICT (event_id) DO NOTHING`). A publish on the broker's own
//! connection first tries the plain insert, which fails as a whole on a
//! duplicate id, and only then the `ON CONFLICT` one: a speculative
//! insertion per row costs more than the rare second statement. In the
//! app's transaction a failed statement would abort the app's
//! transaction, so `.on(..)` always uses `ON CONFLICT`. The statement-level insert
//! trigger ([`super::schema`]) notifies idle pollers, at the commit of the
//! transaction that holds the insert.

use sqlx::PgConnection;

use super::{Inner, ms_i64, now_i64, text};
use crate::Error;
use crate::envelope::Envelope;

/// The rows of `envelopes`, as the insert's arrays.
#[derive(Default)]
pub(super) struct Rows {
    event_ids: Vec<String>,
    queues: Vec<String>,
    names: Vec<String>,
    bodies: Vec<String>,
    visible_at: Vec<i64>,
    queued_at: Vec<i64>,
}

impl Rows {
    pub(super) fn new(envelopes: &[Envelope]) -> Rows {
        let now = now_i64();
        let mut rows = Rows::default();
        for e in envelopes {
            rows.event_ids.push(e.id.to_string());
            rows.queues.push(e.queue.clone());
            rows.names.push(e.name.clone());
            rows.bodies.push(text(e.to_bytes()));
            rows.visible_at.push(e.run_at_ms.map(ms_i64).unwrap_or(now));
            rows.queued_at.push(match e.queued_at_ms {
                0 => now,
                ms => ms_i64(ms),
            });
        }
        rows
    }

    fn query<'q>(
        &'q self,
        sql: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql)
            .bind(&self.event_ids)
            .bind(&self.queues)
            .bind(&self.names)
            .bind(&self.bodies)
            .bind(&self.visible_at)
            .bind(&self.queued_at)
    }
}

/// Stores one event (see [`Broker::publish`](crate::broker::Broker::publish)).
pub(super) async fn publish(inner: &Inner, envelope: &Envelope) -> Result<(), Error> {
    publish_many(inner, std::slice::from_ref(envelope)).await
}

/// Stores `envelopes` in one statement, one commit.
pub(super) async fn publish_many(inner: &Inner, envelopes: &[Envelope]) -> Result<(), Error> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let rows = Rows::new(envelopes);
    let n = match rows.query(&inner.sql.insert_new).execute(&inner.pool).await {
        Ok(done) => done.rows_affected(),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => rows
            .query(&inner.sql.insert)
            .execute(&inner.pool)
            .await
            .map_err(|e| inner.err("publish", e))?
            .rows_affected(),
        Err(e) => return Err(inner.err("publish", e)),
    };
    // This broker's takes see it at once, before the notification arrives.
    inner.waiter.bump();
    if n < envelopes.len() as u64 {
        tracing::debug!(
            broker = %inner.url,
            "{} event(s) already queued: not stored twice",
            envelopes.len() as u64 - n
        );
    }
    Ok(())
}

/// Stores `envelopes` with the app's connection `conn` (inside its
/// transaction, if it has one open), in `schema`. Nothing is committed
/// here: the events exist if and only if the app's transaction commits.
pub(super) async fn insert_on(
    conn: &mut PgConnection,
    insert_sql: &str,
    envelopes: &[Envelope],
) -> Result<u64, sqlx::Error> {
    if envelopes.is_empty() {
        return Ok(0);
    }
    let rows = Rows::new(envelopes);
    Ok(rows
        .query(insert_sql)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}
