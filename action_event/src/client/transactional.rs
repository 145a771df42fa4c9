//! Queueing in the app's own PostgreSQL transaction (see
//! [`Queueing::on`](super::Queueing::on) and
//! [`QueueingMany::on`](super::QueueingMany::on)).

use super::current::{Current, installed, outside_test_mode};
use super::{Client, QueueRequest};
use crate::Error;
use crate::envelope::{Envelope, EventId};

/// Inserts the event of `request` with `conn`, in the schema of the current
/// client's PostgreSQL broker.
pub(super) async fn queue_on<'c, A>(request: QueueRequest, conn: A) -> Result<EventId, Error>
where
    A: sqlx::Acquire<'c, Database = sqlx::Postgres>,
{
    let envelope = request.into_envelope()?;
    let id = envelope.id;
    queue_many_on(vec![envelope], conn).await?;
    Ok(id)
}

/// Inserts `envelopes` with `conn` in one statement, in the schema of the
/// current client's PostgreSQL broker; their ids in order.
pub(super) async fn queue_many_on<'c, A>(
    envelopes: Vec<Envelope>,
    conn: A,
) -> Result<Vec<EventId>, Error>
where
    A: sqlx::Acquire<'c, Database = sqlx::Postgres>,
{
    let Some(first) = envelopes.first() else {
        return Ok(Vec::new());
    };
    let event = first.name.clone();
    let client = match installed() {
        Some(Current::Local(local)) => return super::many::send_local(&*local, envelopes).await,
        Some(Current::Client(client)) => client,
        None if outside_test_mode() => return Err(Error::OutsideTestMode { event }),
        None => Client::global().await?,
    };
    let broker = client.broker();
    let Some(pg) = broker.as_postgres() else {
        return Err(Error::Queue {
            event,
            message: format!(
                "`.on(..)` queues inside a PostgreSQL transaction, but the current client's \
                 broker is `{}`: set ACTION_EVENT_URL (or `Client::connect`) to the \
                 `postgres://` URL of the app's database, or queue without `.on(..)`",
                broker.url()
            ),
        });
    };
    let mut conn = conn.acquire().await.map_err(|e| {
        Error::broker_caused(
            &broker.url(),
            format!("event `{event}`: the app's connection"),
            e,
        )
    })?;
    pg.insert_on(&mut conn, &envelopes).await?;
    Ok(envelopes.iter().map(|e| e.id).collect())
}
