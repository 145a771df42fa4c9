//! Bulk queueing: many events in one call, like Sidekiq's `push_bulk` or
//! Oban's `insert_all` ([`queue_many`], [`Client::queue_many`],
//! [`QueueExt::queue_many`](super::QueueExt::queue_many)).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::current::{Current, installed, outside_test_mode};
use super::{Client, QueueRequest};
use crate::Error;
use crate::envelope::{Envelope, EventId};

type Boxed = Pin<Box<dyn Future<Output = Result<Vec<EventId>, Error>> + Send + 'static>>;

/// Many events on their way to a queue, checked: a future of their ids
/// (what [`queue_many`] and the typed
/// [`QueueExt::queue_many`](super::QueueExt::queue_many) return), or, with
/// the `postgres` feature, `QueueingMany::on` the app's transaction.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// use action_event::QueueRequest;
/// let ids = action_event::queue_many((0..3).map(|i| QueueRequest::new("resize").param("image", i))).await?;
/// # Ok(()) }
/// ```
#[must_use = "the events are queued only once this is awaited (or `.on(&mut tx).await`ed)"]
pub struct QueueingMany {
    /// The requests, checked (made into envelopes) when this is awaited;
    /// an `Err` when one could not even be made into a request.
    requests: Option<Result<Vec<QueueRequest>, Error>>,
    running: Option<Boxed>,
}

impl QueueingMany {
    pub(crate) fn new(requests: Result<Vec<QueueRequest>, Error>) -> QueueingMany {
        QueueingMany {
            requests: Some(requests),
            running: None,
        }
    }

    /// Queues every event with the app's own PostgreSQL connection or
    /// transaction `conn` (anything `sqlx::Acquire`: `&mut tx`,
    /// `&mut *conn`, `&pool`), in one multi-row insert, instead of the
    /// broker's: they are stored if and only if the app's transaction
    /// commits (all of them, or none). Returns their ids in order. Needs
    /// what [`Queueing::on`](super::Queueing::on) needs; with a client on
    /// another backend it is an error ([`Error::Queue`]) and nothing is
    /// queued.
    ///
    /// ```no_run
    /// use action_event::prelude::*;
    /// use action_event::{QueueRequest, sqlx};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "low")]
    /// pub struct ResizeEvent { pub image: i64 }
    /// impl Process for ResizeEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    ///
    /// # async fn app(pool: sqlx::PgPool) -> Result<()> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO albums (id) VALUES (7)").execute(&mut *tx).await?;
    /// // By name:
    /// action_event::queue_many((1..=100).map(|i| QueueRequest::new("resize").param("image", i)))
    ///     .on(&mut tx)
    ///     .await?;
    /// // Typed:
    /// let batch: Vec<ResizeEvent> = (101..=200).map(|image| ResizeEvent { image }).collect();
    /// ResizeEvent::queue_many(&batch).on(&mut tx).await?;
    /// tx.commit().await?; // the 200 events exist from here on, and not before
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub async fn on<'c, A>(mut self, conn: A) -> Result<Vec<EventId>, Error>
    where
        A: sqlx::Acquire<'c, Database = sqlx::Postgres>,
    {
        let requests = self.requests.take().ok_or_else(|| {
            Error::Registry(
                "this `QueueingMany` was polled already: `.on(..)` must come before `.await`"
                    .into(),
            )
        })?;
        super::transactional::queue_many_on(envelopes(requests?)?, conn).await
    }
}

impl Future for QueueingMany {
    type Output = Result<Vec<EventId>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.running.is_none() {
            let Some(requests) = self.requests.take() else {
                return Poll::Ready(Err(Error::Registry(
                    "a `QueueingMany` was polled after it finished".into(),
                )));
            };
            self.running = Some(Box::pin(async move { send_many(requests?).await }));
        }
        match self.running.as_mut() {
            Some(fut) => fut.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for QueueingMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let events = match &self.requests {
            Some(Ok(r)) => format!("{} event(s)", r.len()),
            Some(Err(e)) => format!("error: {e}"),
            None => "taken".into(),
        };
        f.debug_struct("QueueingMany")
            .field("requests", &events)
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl Client {
    /// Queues every request on this client's broker in one batch and
    /// returns their ids, in order, once all are stored durably (see
    /// [`queue_many`] for what an error leaves behind).
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
        let requests: Vec<QueueRequest> = requests.into_iter().collect();
        match installed() {
            Some(Current::Local(local)) => send_local(&*local, envelopes(requests)?).await,
            _ => self.publish_requests(requests).await,
        }
    }

    /// Checks and stores `requests` in one batch: the broker may store the
    /// first ones while the next are checked
    /// ([`Broker::publish_checked`](crate::broker::Broker::publish_checked)).
    async fn publish_requests(&self, requests: Vec<QueueRequest>) -> Result<Vec<EventId>, Error> {
        let mut batch = requests.into_iter().map(QueueRequest::into_envelope);
        self.broker.publish_checked(&mut batch).await
    }
}

/// Queues every request through the current client (the one a poller or
/// [`Client::scope`] installed, else the test mode of this thread, else the
/// global client, as [`QueueRequest::send`] does) in one batch; returns
/// their ids in order. Every request is checked before anything is sent:
/// one bad request fails the call and nothing is queued (see *All or
/// nothing* below). With the `postgres` feature,
/// `queue_many(..).on(&mut tx).await?` queues them in the app's own
/// transaction instead (`QueueingMany::on`).
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
///
/// # All or nothing
///
/// All or nothing where the library can promise it:
/// - every request is checked first, like `queue!` (unknown event, bad
///   params, bad queue name: the error names the event and the field); one
///   bad request fails the call and **nothing is queued**;
/// - SQLite stores the whole batch in one transaction: all or none;
/// - RabbitMQ publishes the batch with every confirm in flight and returns
///   once each one is confirmed. It has no transaction that spans
///   confirms: after an `Err` from the broker (an outage longer than
///   `publish_timeout`, an unroutable message) part of the batch may be
///   stored. Sending the same envelopes again
///   ([`Broker::publish_many`](crate::broker::Broker::publish_many)) keeps
///   their ids, so consumers that dedupe by id see each once;
/// - PostgreSQL stores the batch in one statement (a multi-row insert):
///   all or none; with the `postgres` feature, `QueueingMany::on` stores
///   it with the app's own connection, inside its transaction: all of them
///   exist if and only if that transaction commits.
///
/// Under a test mode ([`crate::testing::fake`] / [`crate::testing::inline`])
/// the events are recorded or run one by one, in order.
pub fn queue_many<I>(requests: I) -> QueueingMany
where
    I: IntoIterator<Item = QueueRequest>,
{
    QueueingMany::new(Ok(requests.into_iter().collect()))
}

/// Checks and sends requests through the current client ([`queue_many`]).
async fn send_many(requests: Vec<QueueRequest>) -> Result<Vec<EventId>, Error> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    match installed() {
        Some(Current::Local(local)) => send_local(&*local, envelopes(requests)?).await,
        Some(Current::Client(client)) => client.publish_requests(requests).await,
        None if outside_test_mode() => Err(Error::OutsideTestMode {
            event: first.name.clone(),
        }),
        None => Client::global().await?.publish_requests(requests).await,
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

pub(super) async fn send_local(
    local: &dyn super::LocalQueue,
    envelopes: Vec<Envelope>,
) -> Result<Vec<EventId>, Error> {
    let mut ids = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        ids.push(local.send(envelope).await?);
    }
    Ok(ids)
}
