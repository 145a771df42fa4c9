//! Queueing events: [`Client`], [`QueueRequest`] (what `queue!` builds) and
//! [`QueueExt`] (the typed form).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::broker::{self, Broker};
use crate::envelope::{Envelope, EventId, now_ms};
use crate::event::Event;
use crate::registry::{DEFAULT_QUEUE, registry};

/// A handle on a broker for queueing events. Cheap to clone.
///
/// `queue!` and [`QueueExt::queue`] use the global client: the one set with
/// [`Client::set_global`] (the poller sets its own), else one connected on
/// first use to `ACTION_EVENT_URL`, else `sqlite://action_event.db`.
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

    /// Queues the event `req` describes; returns its id once the broker
    /// stored it durably. Under [`crate::testing::fake`] or
    /// [`crate::testing::inline`] the event is recorded or run instead.
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
        if let Some(mode) = crate::testing::current() {
            return mode.send(req).await;
        }
        let envelope = req.into_envelope()?;
        self.broker.publish(&envelope).await?;
        Ok(envelope.id)
    }
}

/// One event to queue: what `queue!(name, key = value, ...)` builds.
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
}

impl QueueRequest {
    /// An event named `name` with no params yet.
    ///
    /// ```
    /// let env = action_event::QueueRequest::new("ping").into_envelope().unwrap();
    /// assert_eq!((env.name.as_str(), env.params.to_string().as_str()), ("ping", "{}"));
    /// ```
    pub fn new(name: impl Into<String>) -> Self {
        QueueRequest {
            name: name.into(),
            params: serde_json::Map::new(),
            queue: None,
            run_at_ms: None,
            error: None,
        }
    }

    /// The request for a typed event (its name and serialized fields).
    ///
    /// ```
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
    /// let env = action_event::QueueRequest::new("doc.send_email")
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
    /// let env = QueueRequest::new("doc.e").params_value(serde_json::json!({"a": 1})).into_envelope().unwrap();
    /// assert_eq!(env.params["a"], 1);
    /// assert!(QueueRequest::new("doc.e").params_value(serde_json::json!([1])).into_envelope().is_err());
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

    /// Picks the queue (else the handler's queue, else `medium`).
    ///
    /// ```
    /// use action_event::QueueRequest;
    /// let env = QueueRequest::new("doc.unknown_event").into_envelope().unwrap();
    /// assert_eq!(env.queue, "medium"); // no handler in this binary says otherwise
    /// let env = QueueRequest::new("doc.unknown_event").queue("high").into_envelope().unwrap();
    /// assert_eq!(env.queue, "high");
    /// ```
    pub fn queue(mut self, queue: impl AsRef<str>) -> Self {
        self.queue = Some(queue.as_ref().to_string());
        self
    }

    /// Not to run before `delay` from now.
    ///
    /// ```
    /// use std::time::Duration;
    /// let env = action_event::QueueRequest::new("doc.reminder")
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
    /// assert!(QueueRequest::new("doc.reminder").delay_str("5m").into_envelope().is_ok());
    /// let err = QueueRequest::new("doc.reminder").delay_str("soon").into_envelope().unwrap_err();
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
    /// let env = action_event::QueueRequest::new("doc.reminder")
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
    /// against the handler's struct when this binary knows the event.
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
        let known = registry()
            .ok()
            .and_then(|r| r.get(&self.name).map(|e| (r, e.queue)));
        if let Some((r, _)) = known {
            r.check_params(&self.name, &params)?;
        }
        let queue = match self.queue {
            Some(q) => {
                check_queue_name(&self.name, &q)?;
                q
            }
            None => known.map(|(_, q)| q).unwrap_or(DEFAULT_QUEUE).to_string(),
        };
        let mut env = Envelope::new(self.name, queue, params);
        env.run_at_ms = self.run_at_ms;
        Ok(env)
    }

    /// Queues it through the global client (or, under
    /// [`crate::testing::fake`] / [`crate::testing::inline`], records or
    /// runs it without connecting to a broker).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let id = action_event::QueueRequest::new("hello_world").param("name", "world").send().await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(self) -> Result<EventId, Error> {
        if let Some(mode) = crate::testing::current() {
            return mode.send(self).await;
        }
        Client::global().await?.send(self).await
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
    /// # #[derive(Serialize, Deserialize)]
    /// # #[action_event(queue = "high")]
    /// # pub struct HelloWorldEvent { pub name: String }
    /// # impl Process for HelloWorldEvent {
    /// #     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// # }
    /// # async fn run() -> Result<()> {
    /// HelloWorldEvent { name: "world".into() }.queue().await?;
    /// # Ok(()) }
    /// ```
    fn queue(&self) -> impl Future<Output = Result<EventId, Error>> + Send + 'static {
        let req = QueueRequest::typed(self);
        async move { req?.send().await }
    }

    /// Queues this event on `queue`.
    ///
    /// ```no_run
    /// # use action_event::prelude::*;
    /// # #[derive(Serialize, Deserialize)]
    /// # #[action_event(queue = "high")]
    /// # pub struct HelloWorldEvent { pub name: String }
    /// # impl Process for HelloWorldEvent {
    /// #     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// # }
    /// # async fn run() -> Result<()> {
    /// HelloWorldEvent { name: "world".into() }.queue_on("low").await?;
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
    /// # #[derive(Serialize, Deserialize)]
    /// # #[action_event(queue = "high")]
    /// # pub struct HelloWorldEvent { pub name: String }
    /// # impl Process for HelloWorldEvent {
    /// #     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// # }
    /// # async fn run() -> Result<()> {
    /// HelloWorldEvent { name: "world".into() }.queue_in(std::time::Duration::from_secs(30)).await?;
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
    /// # #[derive(Serialize, Deserialize)]
    /// # #[action_event(queue = "high")]
    /// # pub struct HelloWorldEvent { pub name: String }
    /// # impl Process for HelloWorldEvent {
    /// #     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// # }
    /// # async fn run() -> Result<()> {
    /// let at = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    /// HelloWorldEvent { name: "world".into() }.queue_at(at).await?;
    /// # Ok(()) }
    /// ```
    fn queue_at(
        &self,
        at: SystemTime,
    ) -> impl Future<Output = Result<EventId, Error>> + Send + 'static {
        let req = QueueRequest::typed(self).map(|r| r.at(at));
        async move { req?.send().await }
    }
}

impl<E: Event> QueueExt for E {}
