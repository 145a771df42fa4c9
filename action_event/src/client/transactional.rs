//! Queueing in the app's own PostgreSQL transaction (see
//! [`Queueing::on`](super::Queueing::on)).

use super::current::{Current, installed, outside_test_mode};
use super::{Client, QueueRequest};
use crate::Error;
use crate::envelope::EventId;

/// Inserts the event of `request` with `conn`, in the schema of the current
/// client's PostgreSQL broker.
pub(super) async fn queue_on<'c, A>(request: QueueRequest, conn: A) -> Result<EventId, Error>
where
    A: sqlx::Acquire<'c, Database = sqlx::Postgres>,
{
    let envelope = request.into_envelope()?;
    let client = match installed() {
        Some(Current::Local(local)) => return local.send(envelope).await,
        Some(Current::Client(client)) => client,
        None if outside_test_mode() => {
            return Err(Error::OutsideTestMode {
                event: envelope.name,
            });
        }
        None => Client::global().await?,
    };
    let broker = client.broker();
    let Some(pg) = broker.as_postgres() else {
        return Err(Error::Queue {
            event: envelope.name,
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
            format!("event `{}`: the app's connection", envelope.name),
            e,
        )
    })?;
    pg.insert_on(&mut conn, &envelope).await?;
    Ok(envelope.id)
}
