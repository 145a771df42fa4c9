//! Queueing events: [`Client`], [`QueueRequest`] (what `queue!` builds) and
//! [`QueueExt`] (the typed form), and *the current client*.
//!
//! Every way to queue (`queue!`, [`QueueExt`], [`QueueRequest::send`],
//! `cx.queue(..)` in a handler) goes to the current client, found once per
//! call:
//!
//! 1. the one installed for this task with [`Client::scope`] (a poller
//!    installs its own around every event it runs, so a handler's follow-up
//!    events go to the poller's broker), or by a test mode's `scope`;
//! 2. else the test mode of this thread ([`crate::testing::fake`] /
//!    [`crate::testing::inline`]);
//! 3. else the process's global client ([`Client::global`]), unless a test
//!    mode is active somewhere in this process: then the call fails with
//!    [`Error::OutsideTestMode`] rather than reach a real broker.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::broker::{self, Broker};
use crate::envelope::{Envelope, EventId, now_ms};
use crate::event::{Context, Event};
use crate::registry::registry;

mod current;
mod many;
mod queueing;
#[cfg(feature = "postgres")]
mod transactional;
pub(crate) use current::{
    Current, LocalQueue, count_local_mode, replace_thread_current, scope_current,
};
use current::{installed, outside_test_mode};
pub use many::{QueueingMany, queue_many};
pub use queueing::Queueing;

/// A handle on a broker for queueing events. Cheap to clone.
///
/// `queue!` and [`QueueExt::queue`] use the current client: one installed with [`Client::scope`], else the
/// global client: the one set with [`Client::set_global`] (the poller's
/// command line sets its own), else one connected on first use to
/// `ACTION_EVENT_URL`, else `sqlite://action_event.db`.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// use action_event::Client;
/// let client = Client::connect("sqlite://app.db").await?;
/// client.clone().set_global();
/// let id = client.send(action_event::QueueRequest::new("hello_world").param("name", "world")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
}

static GLOBAL: RwLock<Option<Client>> = RwLock::new(None);
static GLOBAL_INIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Client {
    /// Connects to the broker `url` names.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let client = action_event::Client::connect("sqlite://action_event.db").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Ok(Client {
            broker: broker::connect(url).await?,
        })
    }

    /// A client on a broker already open.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let broker = action_event::broker::connect("sqlite://action_event.db").await?;
    /// let client = action_event::Client::from_broker(broker);
    /// # Ok(()) }
    /// ```
    pub fn from_broker(broker: Arc<dyn Broker>) -> Client {
        Client { broker }
    }

    /// The broker behind this client.
    ///
    /// ```no_run
    /// # async fn run(client: action_event::Client) -> Result<(), action_event::Error> {
    /// println!("queueing through {}", client.broker().url());
    /// # Ok(()) }
    /// ```
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// `fut` with this client as its current client, wherever it runs:
    /// `queue!`, [`QueueExt`] and `cx.queue(..)` inside it (in handlers it
    /// calls, too) go to this client's broker. A poller runs every event
    /// this way; an app or a test that wants a real broker beside a test
    /// mode does too.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let client = action_event::Client::connect("sqlite://other.db").await?;
    /// client
    ///     .scope(async {
    ///         action_event::queue!(hello_world, name = "world").await // into other.db
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        scope_current(Current::Client(self.clone()), fut)
    }

    /// Makes this the client `queue!` uses in this process.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// action_event::Client::connect("sqlite://test.db").await?.set_global();
    /// action_event::queue!(hello_world, name = "world").await?; // into test.db
    /// # Ok(()) }
    /// ```
    pub fn set_global(self) {
        match GLOBAL.write() {
            Ok(mut g) => *g = Some(self),
            Err(poisoned) => *poisoned.into_inner() = Some(self),
        }
    }

    /// The global client, connecting it on first use (see [`Client`]).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let client = action_event::Client::global().await?;
    /// # Ok(()) }
    /// ```
    pub async fn global() -> Result<Client, Error> {
        if let Some(c) = Self::current_global() {
            return Ok(c);
        }
        let _guard = GLOBAL_INIT.lock().await;
        if let Some(c) = Self::current_global() {
            return Ok(c);
        }
        let client = Client::connect(&broker::resolve_url(None)).await?;
        client.clone().set_global();
        Ok(client)
    }

    fn current_global() -> Option<Client> {
        match GLOBAL.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Queues the event `req` describes on this client's broker; returns its
    /// id once the broker stored it durably. Under [`crate::testing::fake`]
    /// or [`crate::testing::inline`] (of this task or thread) the event is
    /// recorded or run instead. The name, queue and params are checked as
    /// for `queue!` (see [`QueueRequest::into_envelope`]).
    ///
    /// ```no_run
    /// # async fn run(client: action_event::Client) -> Result<(), action_event::Error> {
    /// let id = client
    ///     .send(action_event::QueueRequest::new("hello_world").param("name", "world"))
    ///     .await?;
    /// println!("queued {id}");
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, req: QueueRequest) -> Result<EventId, Error> {
        let envelope = req.into_envelope()?;
        match installed() {
            Some(Current::Local(local)) => local.send(envelope).await,
            _ => self.publish(envelope).await,
        }
    }

    async fn publish(&self, envelope: Envelope) -> Result<EventId, Error> {
        self.broker.publish(&envelope).await?;
        Ok(envelope.id)
    }
}

/// One event to queue: what `queue!(name, key = value, ...)` builds.
///
/// Two forms, with one rule: the library never guesses.
/// - [`QueueRequest::new`]: an event of this binary. Its queue (unless
///   given) and its params' check come from the handler's struct, so a name
///   this binary does not know is an error at once ([`Error::UnknownEvent`]:
///   a typo names the nearest event; a binary that links no events is told
///   to add `use my_events as _;`).
/// - [`QueueRequest::foreign`]: an event of another service, which this
///   binary cannot know; the caller states its queue.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// use action_event::QueueRequest;
/// let id = QueueRequest::new("send_email")
///     .param("people_ids", [1, 2, 3])
///     .queue("high")
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a QueueRequest does nothing until `.send().await`"]
pub struct QueueRequest {
    name: String,
    params: serde_json::Map<String, serde_json::Value>,
    queue: Option<String>,
    run_at_ms: Option<u64>,
    error: Option<Error>,
    foreign: bool,
}

impl QueueRequest {
    /// The event of this binary named `name`, with no params yet. A name
    /// this binary does not link is an error when it is sent (or made into
    /// an envelope); for another service's event use
    /// [`QueueRequest::foreign`].
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event]
    /// pub struct PingEvent {}
    /// impl Process for PingEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let env = action_event::QueueRequest::new("ping").into_envelope().unwrap();
    /// assert_eq!((env.name.as_str(), env.params.to_string().as_str()), ("ping", "{}"));
    ///
    /// let err = action_event::QueueRequest::new("pign").into_envelope().unwrap_err();
    /// assert!(err.to_string().starts_with("unknown event `pign`: did you mean `ping`?"), "{err}");
    /// ```
    pub fn new(name: impl Into<String>) -> Self {
        QueueRequest {
            name: name.into(),
            params: serde_json::Map::new(),
            queue: None,
            run_at_ms: None,
            error: None,
            foreign: false,
        }
    }

    /// An event of another service, named `name`: this binary has no
    /// handler for it, so it cannot know its queue or check its params. The
    /// caller states the queue with [`QueueRequest::queue`] (sending without
    /// one is an error naming the fix); params are sent as given. The same
    /// request goes through [`Client::send`]. If this binary does know the
    /// event after all, its params are checked as usual.
    ///
    /// ```
    /// use action_event::QueueRequest;
    /// # async fn run(client: action_event::Client) -> Result<(), action_event::Error> {
    /// // A web server that does not link the billing service's events:
    /// QueueRequest::foreign("billing_sync").queue("high").param("id", 7).send().await?;
    /// client.send(QueueRequest::foreign("billing_sync").queue("high").param("id", 8)).await?;
    /// # Ok(()) }
    /// let env = QueueRequest::foreign("billing_sync").queue("high").param("id", 7).into_envelope().unwrap();
    /// assert_eq!((env.name.as_str(), env.queue.as_str()), ("billing_sync", "high"));
    ///
    /// let err = QueueRequest::foreign("billing_sync").into_envelope().unwrap_err().to_string();
    /// assert!(err.contains(r#"QueueRequest::foreign("billing_sync").queue("#), "{err}");
    /// ```
    pub fn foreign(name: impl Into<String>) -> Self {
        QueueRequest {
            foreign: true,
            ..QueueRequest::new(name)
        }
    }

    /// The request for a typed event (its name and serialized fields).
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(name = "doc.typed_greeting")]
    /// pub struct Greeting { pub name: String }
    /// impl Process for Greeting {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let req = action_event::QueueRequest::typed(&Greeting { name: "world".into() }).unwrap();
    /// let env = req.queue("high").into_envelope().unwrap();
    /// assert_eq!(env.name, "doc.typed_greeting");
    /// assert_eq!(env.params, serde_json::json!({"name": "world"}));
    /// ```
    pub fn typed<E: Event>(event: &E) -> Result<Self, Error> {
        let value = event.__to_json().map_err(|e| Error::Queue {
            event: E::NAME.to_string(),
            message: format!("cannot serialize params: {e}"),
        })?;
        Ok(Self::new(E::NAME).params_value(value))
    }

    /// Adds one param; a value that cannot be serialized is reported by `send`.
    ///
    /// ```
    /// let env = action_event::QueueRequest::foreign("doc.send_email")
    ///     .queue("high")
    ///     .param("people_ids", [1, 2, 3])
    ///     .param("subject", "hi")
    ///     .into_envelope()
    ///     .unwrap();
    /// assert_eq!(env.params, serde_json::json!({"people_ids": [1, 2, 3], "subject": "hi"}));
    /// ```
    pub fn param(mut self, key: &str, value: impl serde::Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => {
                if self.params.insert(key.to_string(), v).is_some() && self.error.is_none() {
                    self.error = Some(Error::Queue {
                        event: self.name.clone(),
                        message: format!("param `{key}` given twice"),
                    });
                }
            }
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(Error::Params {
                        event: self.name.clone(),
                        path: key.to_string(),
                        message: format!("cannot serialize: {e}"),
                    });
                }
            }
        }
        self
    }

    /// Replaces the params with a JSON object.
    ///
    /// ```
    /// use action_event::QueueRequest;
    /// let env = QueueRequest::foreign("doc.e").queue("low").params_value(serde_json::json!({"a": 1})).into_envelope().unwrap();
    /// assert_eq!(env.params["a"], 1);
    /// assert!(QueueRequest::foreign("doc.e").queue("low").params_value(serde_json::json!([1])).into_envelope().is_err());
    /// ```
    pub fn params_value(mut self, params: serde_json::Value) -> Self {
        match params {
            serde_json::Value::Object(map) => self.params = map,
            other => {
                self.error = Some(Error::Params {
                    event: self.name.clone(),
                    path: ".".into(),
                    message: format!("params must be a JSON object, got `{other}`"),
                })
            }
        }
        self
    }

    /// Picks the queue (else the handler's queue; a
    /// [foreign](QueueRequest::foreign) event must have one).
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// use action_event::QueueRequest;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "low")]
    /// pub struct PingEvent {}
    /// impl Process for PingEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// assert_eq!(QueueRequest::new("ping").into_envelope().unwrap().queue, "low");
    /// assert_eq!(QueueRequest::new("ping").queue("high").into_envelope().unwrap().queue, "high");
    /// ```
    pub fn queue(mut self, queue: impl AsRef<str>) -> Self {
        self.queue = Some(queue.as_ref().to_string());
        self
    }

    /// Not to run before `delay` from now.
    ///
    /// ```
    /// use std::time::Duration;
    /// let env = action_event::QueueRequest::foreign("doc.reminder")
    ///     .queue("low")
    ///     .delay(Duration::from_secs(60))
    ///     .into_envelope()
    ///     .unwrap();
    /// assert!(env.run_at_ms.unwrap() >= action_event::envelope::now_ms() + 59_000);
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at_ms = Some(now_ms().saturating_add(delay.as_millis() as u64));
        self
    }

    /// Like [`QueueRequest::delay`], from a humantime string such as `"30s"`.
    ///
    /// ```
    /// use action_event::QueueRequest;
    /// let reminder = || QueueRequest::foreign("doc.reminder").queue("low");
    /// assert!(reminder().delay_str("5m").into_envelope().is_ok());
    /// let err = reminder().delay_str("soon").into_envelope().unwrap_err();
    /// assert!(err.to_string().contains("bad delay `soon`"), "{err}");
    /// ```
    pub fn delay_str(mut self, delay: &str) -> Self {
        match humantime::parse_duration(delay) {
            Ok(d) => self.delay(d),
            Err(e) => {
                self.error = Some(Error::Queue {
                    event: self.name.clone(),
                    message: format!(
                        "bad delay `{delay}`: {e} (write e.g. \"30s\", \"5m\", \"2h\")"
                    ),
                });
                self
            }
        }
    }

    /// Not to run before `at`.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let env = action_event::QueueRequest::foreign("doc.reminder")
    ///     .queue("low")
    ///     .at(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
    ///     .into_envelope()
    ///     .unwrap();
    /// assert_eq!(env.run_at_ms, Some(2_000_000_000_000));
    /// ```
    pub fn at(mut self, at: SystemTime) -> Self {
        self.run_at_ms = Some(
            at.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64,
        );
        self
    }

    /// The envelope this request makes: queue resolved, params checked
    /// against the handler's struct. An error when the name is not an
    /// event of this binary ([`Error::UnknownEvent`], naming the fix), unless
    /// the request is [foreign](QueueRequest::foreign) and states its queue;
    /// an error too when the registry of this binary is inconsistent.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// use action_event::QueueRequest;
    ///
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "low")]
    /// pub struct SendEmailEvent { pub people_ids: Vec<u64> }
    /// impl Process for SendEmailEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    ///
    /// let env = QueueRequest::new("send_email").param("people_ids", [1, 2]).into_envelope().unwrap();
    /// assert_eq!(env.queue, "low"); // the handler's queue
    ///
    /// let err = QueueRequest::new("send_email")
    ///     .param("people_ids", serde_json::json!([1, "two"]))
    ///     .into_envelope()
    ///     .unwrap_err()
    ///     .to_string();
    /// assert!(err.starts_with("event `send_email`: params do not fit at `people_ids[1]`"), "{err}");
    /// ```
    pub fn into_envelope(self) -> Result<Envelope, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let params = serde_json::Value::Object(self.params);
        let queue = if self.foreign {
            // Checked where this binary happens to know it; a registry that
            // is inconsistent does not stop another service's event.
            if let Some(r) = registry().ok().filter(|r| r.get(&self.name).is_some()) {
                r.check_params(&self.name, &params)?;
            }
            self.queue.ok_or_else(|| Error::Queue {
                event: self.name.clone(),
                message: format!(
                    "a foreign event needs its queue, which this binary cannot know: `QueueRequest::foreign(\"{}\").queue(\"high\")`",
                    self.name
                ),
            })?
        } else {
            let r = registry()?;
            let Some(info) = r.get(&self.name) else {
                return Err(Error::UnknownEvent {
                    name: self.name,
                    known: r.names(),
                });
            };
            r.check_params(&self.name, &params)?;
            self.queue.unwrap_or_else(|| info.queue.to_string())
        };
        check_queue_name(&self.name, &queue)?;
        let mut env = Envelope::new(self.name, queue, params);
        env.run_at_ms = self.run_at_ms;
        Ok(env)
    }

    /// Queues it through the current client (see [`Client`]):
    /// the one a poller or [`Client::scope`] installed, else the test mode
    /// of this thread ([`crate::testing::fake`] records it,
    /// [`crate::testing::inline`] runs it), else the global client. While
    /// a test mode is active in this process, falling through to the
    /// global client is [`Error::OutsideTestMode`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let id = action_event::QueueRequest::new("hello_world").param("name", "world").send().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// The [`Queueing`] it returns is a future; with the `postgres`
    /// feature, `Queueing::on` queues in the app's transaction instead.
    pub fn send(self) -> Queueing {
        Queueing::new(Ok(self))
    }

    async fn send_now(self) -> Result<EventId, Error> {
        let envelope = self.into_envelope()?;
        match installed() {
            Some(Current::Local(local)) => local.send(envelope).await,
            Some(Current::Client(client)) => client.publish(envelope).await,
            None if outside_test_mode() => Err(Error::OutsideTestMode {
                event: envelope.name,
            }),
            None => Client::global().await?.publish(envelope).await,
        }
    }
}

// Defined here, not in `event.rs`: the event model knows nothing of where
// events go (see the crate's module map).
impl Context {
    /// Queues a follow-up event through the current client: in a poller,
    /// the poller's broker; under a test mode, the mode. The same as
    /// `queue!` with this name (see [`QueueRequest::send`]).
    ///
    /// ```no_run
    /// # async fn f(cx: &action_event::Context) -> action_event::Result<()> {
    /// cx.queue("send_email", serde_json::json!({"people_ids": [1, 2, 3]})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue(
        &self,
        name: &str,
        params: serde_json::Value,
    ) -> std::result::Result<EventId, Error> {
        QueueRequest::new(name).params_value(params).send().await
    }

    /// Queues a typed follow-up event through the current client (see
    /// [`Context::queue`]).
    ///
    /// ```no_run
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event]
    /// pub struct SendEmailEvent { pub people_ids: Vec<u64> }
    /// impl Process for SendEmailEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// # async fn f(cx: &Context) -> Result<()> {
    /// cx.queue_event(&SendEmailEvent { people_ids: vec![1, 2] }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn queue_event<E: Event>(&self, event: &E) -> std::result::Result<EventId, Error> {
        QueueRequest::typed(event)?.send().await
    }
}

fn check_queue_name(event: &str, queue: &str) -> Result<(), Error> {
    let ok = !queue.is_empty()
        && queue.len() <= 200
        && queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Queue {
            event: event.to_string(),
            message: format!(
                "bad queue name `{queue}`: use letters, digits, `_` and `-` (e.g. `high`)"
            ),
        })
    }
}

/// The typed way to queue: `HelloWorldEvent { .. }.queue().await?`.
///
/// ```no_run
/// use action_event::prelude::*;
/// #[derive(Serialize, Deserialize)]
/// #[action_event(queue = "high")]
/// pub struct HelloWorldEvent { pub name: String }
/// impl Process for HelloWorldEvent {
///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
/// }
/// # async fn run() -> Result<()> {
/// HelloWorldEvent { name: "world".into() }.queue().await?;
/// HelloWorldEvent { name: "later".into() }.queue_in(std::time::Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
pub trait QueueExt: Event {
    /// Queues this event on its handler's queue.
    ///
    /// ```no_run
    /// # use action_event::prelude::*;
    /// # async fn run<HelloWorldEvent: Event>(event: HelloWorldEvent) -> Result<()> {
    /// event.queue().await?;
    /// # Ok(()) }
    /// ```
    /// With the `postgres` feature, `event.queue().on(&mut tx).await?`
    /// queues it in the app's transaction (`Queueing::on`).
    fn queue(&self) -> Queueing {
        Queueing::new(QueueRequest::typed(self))
    }

    /// Queues this event on `queue`.
    ///
    /// ```no_run
    /// # use action_event::prelude::*;
    /// # async fn run<HelloWorldEvent: Event>(event: HelloWorldEvent) -> Result<()> {
    /// event.queue_on("low").await?;
    /// # Ok(()) }
    /// ```
    fn queue_on(
        &self,
        queue: &str,
    ) -> impl Future<Output = Result<EventId, Error>> + Send + 'static {
        let req = QueueRequest::typed(self).map(|r| r.queue(queue));
        async move { req?.send().await }
    }

    /// Queues this event not to run before `delay` from now.
    ///
    /// ```no_run
    /// # use action_event::prelude::*;
    /// # async fn run<HelloWorldEvent: Event>(event: HelloWorldEvent) -> Result<()> {
    /// event.queue_in(std::time::Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    fn queue_in(
        &self,
        delay: Duration,
    ) -> impl Future<Output = Result<EventId, Error>> + Send + 'static {
        let req = QueueRequest::typed(self).map(|r| r.delay(delay));
        async move { req?.send().await }
    }

    /// Queues this event not to run before `at`.
    ///
    /// ```no_run
    /// # use action_event::prelude::*;
    /// # async fn run<HelloWorldEvent: Event>(event: HelloWorldEvent) -> Result<()> {
    /// let at = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    /// event.queue_at(at).await?;
    /// # Ok(()) }
    /// ```
    fn queue_at(
        &self,
        at: SystemTime,
    ) -> impl Future<Output = Result<EventId, Error>> + Send + 'static {
        let req = QueueRequest::typed(self).map(|r| r.at(at));
        async move { req?.send().await }
    }

    /// Queues every event of `events` on its handler's queue in one batch
    /// through the current client, as [`queue_many`] does: all are checked
    /// first (nothing is queued if one fails), then stored together; the
    /// ids come back in order. With the `postgres` feature,
    /// `ResizeEvent::queue_many(&batch).on(&mut tx).await?` stores them in
    /// the app's own transaction (`QueueingMany::on`).
    ///
    /// ```no_run
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "low")]
    /// pub struct ResizeEvent { pub image: u64 }
    /// impl Process for ResizeEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// # async fn run() -> Result<()> {
    /// let batch: Vec<ResizeEvent> = (0..1000).map(|image| ResizeEvent { image }).collect();
    /// let ids = ResizeEvent::queue_many(&batch).await?;
    /// assert_eq!(ids.len(), 1000);
    /// # Ok(()) }
    /// ```
    fn queue_many<'a, I>(events: I) -> QueueingMany
    where
        I: IntoIterator<Item = &'a Self>,
        Self: 'a,
    {
        QueueingMany::new(events.into_iter().map(QueueRequest::typed).collect())
    }
}

impl<E: Event> QueueExt for E {}
