//! [`Queueing`]: what `queue!`, [`QueueRequest::send`] and
//! [`QueueExt::queue`](super::QueueExt::queue) return. Awaited, it queues
//! through the current client; with the `postgres` feature, `.on(..)`
//! queues inside the app's own PostgreSQL transaction instead (see
//! [`Queueing`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::QueueRequest;
use crate::Error;
use crate::envelope::EventId;

type Boxed = Pin<Box<dyn Future<Output = Result<EventId, Error>> + Send + 'static>>;

/// An event on its way to a queue: a future of its [`EventId`], or, with
/// the `postgres` feature, `Queueing::on` the app's transaction.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// let id = action_event::QueueRequest::new("hello_world").param("name", "world").send().await?;
/// # Ok(()) }
/// ```
///
/// # Transactional enqueue
///
/// `queue!(order_placed, id = 7).on(&mut tx).await?` inserts the event
/// with the app's connection, in its open transaction: the event exists if
/// and only if that transaction commits. A rollback (or a crash before the
/// commit) leaves no event; after the commit it is as durable as the app's
/// own rows, and pollers wake at the commit (the insert trigger's
/// `NOTIFY` is delivered then).
///
/// What `.on(..)` needs and what happens otherwise:
/// - the `postgres` feature: without it `.on` does not exist (a compile
///   error: no method named `on`);
/// - a current client (see [`Client`](crate::Client)) on a `postgres://`
///   broker: its schema is where the event goes, and it has migrated the
///   tables. With a client on another backend (SQLite, RabbitMQ) `.on` is
///   a runtime error, [`Error::Queue`], naming the broker URL and the fix;
///   the event is never queued outside the transaction;
/// - the app's connection on the same database as that URL;
/// - under [`crate::testing::fake`] / [`crate::testing::inline`], `.on`
///   records or runs the event like `.await` does (the test mode decides
///   what happens to events; the transaction plays no part).
#[must_use = "an event is queued only once this is awaited (or `.on(&mut tx).await`ed)"]
pub struct Queueing {
    request: Option<Result<QueueRequest, Error>>,
    running: Option<Boxed>,
}

impl Queueing {
    pub(crate) fn new(request: Result<QueueRequest, Error>) -> Queueing {
        Queueing {
            request: Some(request),
            running: None,
        }
    }

    /// Queues the event with the app's own PostgreSQL connection or
    /// transaction `conn` (anything `sqlx::Acquire`: `&mut tx`,
    /// `&mut *conn`, `&pool`) instead of the broker's: it is stored if and
    /// only if the app's transaction commits. See [`Queueing`] for what it
    /// needs and what happens with other backends.
    ///
    /// ```no_run
    /// use action_event::prelude::*;
    /// use action_event::sqlx;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event]
    /// pub struct OrderPlacedEvent { pub id: i64 }
    /// impl Process for OrderPlacedEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    ///
    /// # async fn app(pool: sqlx::PgPool) -> Result<()> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (7)").execute(&mut *tx).await?;
    /// queue!(order_placed, id = 7).on(&mut tx).await?;          // by name
    /// OrderPlacedEvent { id: 7 }.queue().on(&mut tx).await?;     // typed
    /// tx.commit().await?; // both events exist from here on, and not before
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub async fn on<'c, A>(mut self, conn: A) -> Result<EventId, Error>
    where
        A: sqlx::Acquire<'c, Database = sqlx::Postgres>,
    {
        let request = self.request.take().ok_or_else(|| {
            Error::Registry(
                "this `Queueing` was polled already: `.on(..)` must come before `.await`".into(),
            )
        })?;
        super::transactional::queue_on(request?, conn).await
    }
}

impl Future for Queueing {
    type Output = Result<EventId, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.running.is_none() {
            let Some(request) = self.request.take() else {
                return Poll::Ready(Err(Error::Registry(
                    "a `Queueing` was polled after it finished".into(),
                )));
            };
            self.running = Some(Box::pin(async move { request?.send_now().await }));
        }
        match self.running.as_mut() {
            Some(fut) => fut.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for Queueing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queueing")
            .field("request", &self.request)
            .field("running", &self.running.is_some())
            .finish()
    }
}
