//! What handlers are made of: [`Process`], [`Flow`], [`Context`], [`State`].

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::envelope::{Envelope, EventId};

/// What handlers and filters return: anyhow's `Result`, so that `?`
/// works on any error (a database's, an HTTP client's, the library's
/// own [`crate::Error`]) and `.context(..)` adds to the message the
/// poller logs and keeps with a failed event.
///
/// This is the one place the library uses anyhow: a handler's error is
/// the app's, of any type, and only reported; the library's own
/// functions return [`crate::Result`], whose [`crate::Error`] a caller
/// can match on.
///
/// ```
/// use action_event::prelude::*;
/// fn parse(s: &str) -> Result<u32> {
///     Ok(s.parse::<u32>()?)
/// }
/// assert!(parse("x").is_err());
/// ```
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

/// The work of an event. Every event struct implements it; base events do not.
///
/// Write it with `async fn`; the future must be `Send` (it runs on a
/// multi-threaded runtime), and the compiler says so at your `async fn`.
///
/// ```
/// use action_event::prelude::*;
///
/// #[derive(Debug, Serialize, Deserialize)]
/// #[action_event(queue = "high")]
/// pub struct HelloWorldEvent { pub name: String }
///
/// impl Process for HelloWorldEvent {
///     async fn process(self, cx: &Context) -> Result<()> {
///         println!("hello {} (attempt {})", self.name, cx.attempt());
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "event `{Self}` has no `Process` impl",
    label = "this event needs `impl Process for {Self}`",
    note = "add `impl Process for {Self} {{ async fn process(self, cx: &Context) -> Result<()> {{ ... }} }}`",
    note = "a struct that only carries filters and defaults is a base: `#[action_event(base)]`"
)]
pub trait Process: Sized + Send + 'static {
    /// Runs the event. An `Err` (or a panic, or a timeout) is a failure: it is
    /// retried with backoff, then dead-lettered.
    ///
    /// ```
    /// # use action_event::prelude::*;
    /// # #[derive(Serialize, Deserialize)]
    /// # #[action_event]
    /// # pub struct ChargeEvent { pub amount: i64 }
    /// impl Process for ChargeEvent {
    ///     async fn process(self, cx: &Context) -> Result<()> {
    ///         anyhow::ensure!(self.amount > 0, "event {}: amount must be positive", cx.id());
    ///         Ok(())
    ///     }
    /// }
    /// ```
    fn process(self, cx: &Context) -> impl Future<Output = Result<()>> + Send;
}

/// What a filter tells the chain to do next.
///
/// ```
/// use action_event::prelude::*;
///
/// async fn only_weekdays(cx: &mut Context) -> Result<Flow> {
///     let weekend: bool = cx.param("weekend").unwrap_or(false);
///     Ok(if weekend { Flow::Halt } else { Flow::Continue })
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Run the next filter, then the event.
    Continue,
    /// Stop here: the event is not run; it counts as handled (acked and
    /// logged as halted), not as failed.
    Halt,
}

/// The app's environment (DB pools, clients, config), handed to the poller
/// once and reached from every filter and handler with [`Context::state`].
///
/// ```
/// use action_event::State;
/// struct Config { greeting: &'static str }
/// let mut state = State::new();
/// state.insert(Config { greeting: "hello" });
/// assert_eq!(state.get::<Config>().unwrap().greeting, "hello");
/// ```
#[derive(Clone, Default)]
pub struct State {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    names: Vec<&'static str>,
}

impl State {
    /// An empty environment.
    ///
    /// ```
    /// let state = action_event::State::new();
    /// assert!(state.type_names().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value, replacing one of the same type.
    ///
    /// ```
    /// let mut state = action_event::State::new();
    /// state.insert(1u8).insert("config");
    /// state.insert(2u8);
    /// assert_eq!(*state.get::<u8>().unwrap(), 2);
    /// assert_eq!(state.type_names(), ["u8", "&str"]);
    /// ```
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> &mut Self {
        if self
            .map
            .insert(TypeId::of::<T>(), Arc::new(value))
            .is_none()
        {
            self.names.push(type_name::<T>());
        }
        self
    }

    /// Builder form of [`State::insert`].
    ///
    /// ```
    /// struct Db;
    /// let state = action_event::State::new().with(Db).with(3u32);
    /// assert!(state.get::<Db>().is_ok());
    /// ```
    pub fn with<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// The value of type `T`; the error names the type when it is missing.
    ///
    /// ```
    /// struct Db;
    /// let state = action_event::State::new().with(5u32);
    /// assert_eq!(*state.get::<u32>().unwrap(), 5);
    /// let err = state.get::<Db>().err().unwrap().to_string();
    /// assert!(err.contains("Db` was not provided"), "{err}");
    /// ```
    pub fn get<T: Send + Sync + 'static>(&self) -> std::result::Result<&T, Error> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .ok_or(Error::MissingState {
                type_name: type_name::<T>(),
            })
    }

    /// The type names held, in insertion order (for the startup log).
    ///
    /// ```
    /// let state = action_event::State::new().with(String::new());
    /// assert_eq!(state.type_names(), ["alloc::string::String"]);
    /// ```
    pub fn type_names(&self) -> &[&'static str] {
        &self.names
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names.iter()).finish()
    }
}

/// Everything a filter or handler knows about the event being run, plus the
/// app's [`State`] and a place for filters to hand data to the handler.
///
/// ```
/// use action_event::prelude::*;
///
/// struct Tenant(String);
///
/// async fn load_tenant(cx: &mut Context) -> Result<Flow> {
///     let id: u64 = cx.param("tenant_id")?;
///     cx.insert(Tenant(format!("tenant-{id}")));
///     Ok(Flow::Continue)
/// }
///
/// # let mut cx = Context::for_test("welcome", serde_json::json!({"tenant_id": 7}));
/// # futures_executor(load_tenant(&mut cx));
/// # assert_eq!(cx.get::<Tenant>().unwrap().0, "tenant-7");
/// # fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct Context {
    id: EventId,
    name: String,
    queue: String,
    attempt: u32,
    params: serde_json::Value,
    state: Arc<State>,
    locals: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("attempt", &self.attempt)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub(crate) fn new(envelope: &Envelope, state: Arc<State>) -> Self {
        Context {
            id: envelope.id,
            name: envelope.name.clone(),
            queue: envelope.queue.clone(),
            attempt: envelope.attempt,
            params: envelope.params.clone(),
            state,
            locals: HashMap::new(),
        }
    }

    /// A context for unit-testing a filter or handler without a broker.
    ///
    /// ```
    /// let cx = action_event::Context::for_test("hello_world", serde_json::json!({"name": "world"}));
    /// assert_eq!(cx.param::<String>("name").unwrap(), "world");
    /// assert_eq!(cx.attempt(), 1);
    /// ```
    pub fn for_test(name: &str, params: serde_json::Value) -> Self {
        Self::new(
            &Envelope::new(name, "medium", params),
            Arc::new(State::new()),
        )
    }

    /// Same as [`Context::for_test`], with the app's state.
    ///
    /// ```
    /// use action_event::{Context, State};
    /// let cx = Context::for_test_with_state("e", serde_json::json!({}), State::new().with(5u8));
    /// assert_eq!(*cx.state::<u8>().unwrap(), 5);
    /// ```
    pub fn for_test_with_state(name: &str, params: serde_json::Value, state: State) -> Self {
        Self::new(&Envelope::new(name, "medium", params), Arc::new(state))
    }

    /// The event id.
    ///
    /// ```
    /// let a = action_event::Context::for_test("e", serde_json::json!({}));
    /// let b = action_event::Context::for_test("e", serde_json::json!({}));
    /// assert_ne!(a.id(), b.id());
    /// ```
    pub fn id(&self) -> EventId {
        self.id
    }
    /// The event name, e.g. `hello_world`.
    ///
    /// ```
    /// let cx = action_event::Context::for_test("hello_world", serde_json::json!({}));
    /// assert_eq!(cx.name(), "hello_world");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The queue it was taken from.
    ///
    /// ```
    /// let cx = action_event::Context::for_test("hello_world", serde_json::json!({}));
    /// assert_eq!(cx.queue_name(), "medium");
    /// ```
    pub fn queue_name(&self) -> &str {
        &self.queue
    }
    /// Which attempt this is: 1 for the first run.
    ///
    /// ```
    /// let cx = action_event::Context::for_test("hello_world", serde_json::json!({}));
    /// assert_eq!(cx.attempt(), 1);
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The raw params, as queued.
    ///
    /// ```
    /// let cx = action_event::Context::for_test("e", serde_json::json!({"name": "world"}));
    /// assert_eq!(cx.params()["name"], "world");
    /// ```
    pub fn params(&self) -> &serde_json::Value {
        &self.params
    }

    /// One param, deserialized; the error names the event and the key.
    ///
    /// ```
    /// let cx = action_event::Context::for_test("e", serde_json::json!({"ids": [1, 2]}));
    /// assert_eq!(cx.param::<Vec<u32>>("ids").unwrap(), vec![1, 2]);
    /// let err = cx.param::<String>("ids").unwrap_err().to_string();
    /// assert!(err.contains("event `e`") && err.contains("ids"), "{err}");
    /// ```
    pub fn param<T: DeserializeOwned>(&self, key: &str) -> std::result::Result<T, Error> {
        let value = self.params.get(key).ok_or_else(|| Error::MissingParam {
            event: self.name.clone(),
            key: key.to_string(),
        })?;
        T::deserialize(value).map_err(|e| Error::Params {
            event: self.name.clone(),
            path: key.to_string(),
            message: e.to_string(),
        })
    }

    /// The app's value of type `T` (see [`State`]); the error names `T`.
    ///
    /// ```
    /// use action_event::prelude::*;
    /// struct Greeting(&'static str);
    /// async fn greet(cx: &mut Context) -> Result<Flow> {
    ///     let greeting = cx.state::<Greeting>()?; // an error naming `Greeting` when missing
    ///     println!("{}", greeting.0);
    ///     Ok(Flow::Continue)
    /// }
    /// let cx = Context::for_test_with_state("e", serde_json::json!({}), State::new().with(Greeting("hi")));
    /// assert_eq!(cx.state::<Greeting>().unwrap().0, "hi");
    /// ```
    pub fn state<T: Send + Sync + 'static>(&self) -> std::result::Result<&T, Error> {
        self.state.get::<T>()
    }

    /// Stores a value for later filters and the handler; returns the one it replaces.
    ///
    /// ```
    /// let mut cx = action_event::Context::for_test("e", serde_json::json!({}));
    /// assert_eq!(cx.insert(1u32), None);
    /// assert_eq!(cx.insert(2u32), Some(1));
    /// ```
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.locals
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast::<T>().ok().map(|b| *b))
    }

    /// A value a filter stored with [`Context::insert`].
    ///
    /// ```
    /// struct Tenant(u64);
    /// let mut cx = action_event::Context::for_test("e", serde_json::json!({}));
    /// assert!(cx.get::<Tenant>().is_none());
    /// cx.insert(Tenant(7));
    /// assert_eq!(cx.get::<Tenant>().unwrap().0, 7);
    /// ```
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.locals
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }

    /// Mutable access to a value a filter stored.
    ///
    /// ```
    /// let mut cx = action_event::Context::for_test("e", serde_json::json!({}));
    /// cx.insert(vec!["a"]);
    /// cx.get_mut::<Vec<&str>>().unwrap().push("b");
    /// assert_eq!(cx.get::<Vec<&str>>().unwrap(), &["a", "b"]);
    /// ```
    pub fn get_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.locals
            .get_mut(&TypeId::of::<T>())
            .and_then(|v| v.downcast_mut::<T>())
    }
}

/// Implemented by `#[action_event]` for every event struct: its name.
///
/// ```
/// use action_event::prelude::*;
/// #[derive(Serialize, Deserialize)]
/// #[action_event]
/// struct HelloWorldEvent { name: String }
/// impl Process for HelloWorldEvent {
///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
/// }
/// assert_eq!(<HelloWorldEvent as action_event::Event>::NAME, "hello_world");
/// ```
// The bounds are `Process` and `EventParams` (not `Serialize +
// DeserializeOwned` directly) so that a struct missing its serde derives or
// its `Process` impl gets exactly one error, at the `impl Event` that
// `#[action_event]` writes on the struct's name, with the message of our
// `#[diagnostic::on_unimplemented]` rather than serde's.
pub trait Event: Process + EventParams + Send + Sync + 'static {
    /// The event name, e.g. `hello_world`.
    const NAME: &'static str;
}

/// Implemented by `#[action_event(base)]`: a type that events may `extends`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a base event, so nothing can `extends` it",
    label = "not declared with `#[action_event(base)]`",
    note = "only a base can be extended: declare it with `#[action_event(base)]`; a base carries filters and defaults and is never processed itself (an event that is processed cannot be a base)"
)]
/// ```
/// use action_event::prelude::*;
/// #[action_event(base, queue = "low")]
/// pub struct ApplicationEvent;
/// fn is_base<T: action_event::BaseEvent>() {}
/// is_base::<ApplicationEvent>();
/// ```
pub trait BaseEvent: 'static {}

/// The params of an event: what `#[action_event]` needs from the struct,
/// `serde`'s `Serialize` and `Deserialize`. Implemented for every type that
/// has both.
///
/// ```
/// fn is_params<T: action_event::EventParams>() {}
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Greeting { name: String }
/// is_params::<Greeting>();
/// ```
///
/// It has no supertraits on purpose: an event struct that misses a derive
/// then gets one error, this trait's, instead of one from serde per trait.
#[diagnostic::on_unimplemented(
    message = "event `{Self}` cannot be (de)serialized as params",
    label = "add `#[derive(Serialize, Deserialize)]` to this struct",
    note = "params travel as JSON: an event derives both `Serialize` and `Deserialize` (from `action_event::prelude` or `serde`)"
)]
pub trait EventParams: Sized {
    /// The params as JSON. Used by the typed `queue()`.
    #[doc(hidden)]
    fn __to_json(&self) -> std::result::Result<serde_json::Value, serde_json::Error>;

    /// Reads params; the error has the field path, e.g. `people_ids[1]`.
    #[doc(hidden)]
    fn __from_json(value: &serde_json::Value) -> std::result::Result<Self, ParamsError>;
}

// `do_not_recommend`: without it, rustc reports serde's missing traits
// instead of the message above.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> EventParams for T {
    fn __to_json(&self) -> std::result::Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn __from_json(value: &serde_json::Value) -> std::result::Result<Self, ParamsError> {
        // Params that fit (nearly all) are read once, without tracking the
        // path; only a failure is read again to name the field.
        if let Ok(v) = <T as serde::Deserialize>::deserialize(value) {
            return Ok(v);
        }
        serde_path_to_error::deserialize::<_, T>(value).map_err(|e| ParamsError {
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        })
    }
}

/// Params that do not fit: the field path and serde's message.
#[doc(hidden)]
#[derive(Debug)]
pub struct ParamsError {
    pub path: String,
    pub message: String,
}
