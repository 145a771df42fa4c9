//! Bulk queueing: many events in one call, like Sidekiq's `push_bulk` or
//! Oban's `insert_all` ([`queue_many`], [`Client::queue_many`],
//! [`QueueExt::queue_many`](super::QueueExt::queue_many)).
//!
//! All or nothing where the library can promise it:
//! - every request is checked first, like `queue!` (unknown event, bad
//!   params, bad queue name: the error names the event and the field); one
//!   bad request fails the call and **nothing is queued**;
//! - SQLite stores the whole batch in one transaction: all or none;
//! - RabbitMQ publishes the batch with every confirm in flight and returns
//!   once each one is confirmed. It has no transaction that spans
//!   confirms: after an `Err` from the broker (an outage longer than
//!   `publish_timeout`, an unroutable message) part of the batch may be
//!   stored. Sending the same envelopes again
//!   ([`Broker::publish_many`](crate::broker::Broker::publish_many)) keeps
//!   their ids, so consumers that dedupe by id see each once.
//!
//! Under a test mode ([`crate::testing::fake`] / [`crate::testing::inline`])
//! the events are recorded or run one by one, in order.

use super::current::{Current, installed, outside_test_mode};
use super::{Client, QueueRequest};
use crate::Error;
use crate::envelope::{Envelope, EventId};

impl Client {
    /// Queues every request on this client's broker in one batch and
    /// returns their ids, in order, once all are stored durably (see the
    /// [module docs](self) for what an error leaves behind).
    ///
    /// ```no_run
    /// # async fn run(client: action_event::Client) -> Result<(), action_event::Error> {
    /// use action_event::QueueRequest;
    /// let ids = client
    ///     .queue_many((1..=100).map(|id| QueueRequest::new("send_email").param("person_id", id)))
    ///     .await?;
    /// assert_eq!(ids.len(), 100);
    /// # Ok(()) }
    /// ```
    pub async fn queue_many<I>(&self, requests: I) -> Result<Vec<EventId>, Error>
    where
        I: IntoIterator<Item = QueueRequest>,
    {
        let envelopes = envelopes(requests)?;
        match installed() {
            Some(Current::Local(local)) => send_local(&*local, envelopes).await,
            _ => self.publish_many(envelopes).await,
        }
    }

    async fn publish_many(&self, envelopes: Vec<Envelope>) -> Result<Vec<EventId>, Error> {
        self.broker.publish_many(&envelopes).await?;
        Ok(envelopes.iter().map(|e| e.id).collect())
    }
}

/// Queues every request through the current client (the one a poller or
/// [`Client::scope`] installed, else the test mode of this thread, else the
/// global client, as [`QueueRequest::send`] does) in one batch; returns
/// their ids in order. Every request is checked before anything is sent:
/// one bad request fails the call and nothing is queued (see the
/// [module docs](self)).
///
/// ```rust,standalone_crate
/// use action_event::prelude::*;
/// use action_event::QueueRequest;
/// #[derive(Serialize, Deserialize)]
/// #[action_event(queue = "low")]
/// pub struct ResizeEvent { pub image: u64 }
/// impl Process for ResizeEvent {
///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
/// }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let fake = action_event::testing::fake();
/// let ids = action_event::queue_many((0..3).map(|i| QueueRequest::new("resize").param("image", i)))
///     .await
///     .unwrap();
/// assert_eq!(ids.len(), 3);
/// assert_eq!(fake.queued().len(), 3);
///
/// // One bad request: an error naming the event and the field, nothing queued.
/// let err = action_event::queue_many([
///     QueueRequest::new("resize").param("image", 4),
///     QueueRequest::new("resize").param("image", "five"),
/// ])
/// .await
/// .unwrap_err();
/// assert!(err.to_string().contains("`resize`") && err.to_string().contains("image"), "{err}");
/// assert_eq!(fake.queued().len(), 3);
/// # });
/// ```
pub async fn queue_many<I>(requests: I) -> Result<Vec<EventId>, Error>
where
    I: IntoIterator<Item = QueueRequest>,
{
    let envelopes = envelopes(requests)?;
    let Some(first) = envelopes.first() else {
        return Ok(Vec::new());
    };
    match installed() {
        Some(Current::Local(local)) => send_local(&*local, envelopes).await,
        Some(Current::Client(client)) => client.publish_many(envelopes).await,
        None if outside_test_mode() => Err(Error::OutsideTestMode {
            event: first.name.clone(),
        }),
        None => Client::global().await?.publish_many(envelopes).await,
    }
}

/// Every request checked and made into its envelope; the first bad one is
/// the error.
fn envelopes<I>(requests: I) -> Result<Vec<Envelope>, Error>
where
    I: IntoIterator<Item = QueueRequest>,
{
    requests
        .into_iter()
        .map(QueueRequest::into_envelope)
        .collect()
}

async fn send_local(
    local: &dyn super::LocalQueue,
    envelopes: Vec<Envelope>,
) -> Result<Vec<EventId>, Error> {
    let mut ids = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        ids.push(local.send(envelope).await?);
    }
    Ok(ids)
}
