//! The registry: every event this binary links, found through `inventory`,
//! with its settings and filter chain resolved through `extends`.
//!
//! `#[action_event]` submits one [`EventDecl`] per struct. Nothing here
//! depends on the order `inventory` yields them in: inheritance is walked by
//! type, from the root base down.
//!
//! The linker drops a library crate the binary never names, and with it its
//! events, without a warning: a binary whose events live in another crate
//! writes `use my_events as _;`.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use crate::Error;
use crate::event::{Context, Event, Flow, ParamsError, Result};

/// A boxed, `Send` future: the one shape every filter and handler is erased to.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A filter, erased.
pub type FilterFn = for<'a> fn(&'a mut Context) -> BoxFuture<'a, Result<Flow>>;

/// The queue an event goes to when neither the call nor its handler says.
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
/// assert_eq!(env.queue, action_event::DEFAULT_QUEUE);
/// ```
pub const DEFAULT_QUEUE: &str = "medium";

/// How many times a failed event is retried when no `retries = N` says (on
/// the event or a base it extends); also how many times a poller retries an
/// event whose name it does not know, unless `--unknown-retries N`
/// ([`crate::poller::PollerConfig::unknown_retries`]) says otherwise.
///
/// ```
/// assert_eq!(action_event::DEFAULT_RETRIES, 10); // override with `#[action_event(retries = 3)]`
/// ```
pub const DEFAULT_RETRIES: u32 = 10;

/// What `#[action_event]` registers for one struct. Generated code only.
#[doc(hidden)]
pub struct EventDecl {
    pub type_name: fn() -> &'static str,
    pub type_id: fn() -> TypeId,
    pub name: &'static str,
    pub base: bool,
    pub parent: Option<ParentDecl>,
    pub queue: Option<&'static str>,
    pub retries: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub filters: &'static [FilterDecl],
    pub skips: &'static [SkipDecl],
    pub handler: Option<Handler>,
    /// `every`/`cron`: the event is queued by the pollers' scheduler.
    pub periodic: Option<crate::periodic::PeriodicDecl>,
}

/// The `extends = T` of an [`EventDecl`]. Generated code only.
#[doc(hidden)]
pub struct ParentDecl {
    pub type_name: fn() -> &'static str,
    pub type_id: fn() -> TypeId,
}

/// One `#[before_filter(path)]` entry. Generated code only.
#[doc(hidden)]
pub struct FilterDecl {
    /// The path as written.
    pub path: &'static str,
    /// The full path of the function (its identity).
    pub id: fn() -> &'static str,
    pub run: FilterFn,
}

/// One `#[skip_before_filter(path)]` entry. Generated code only.
#[doc(hidden)]
pub struct SkipDecl {
    pub path: &'static str,
    pub id: fn() -> &'static str,
}

/// How to decode and run one event type, erased. Generated code only.
#[doc(hidden)]
pub struct Handler {
    pub decode: fn(&serde_json::Value) -> std::result::Result<Box<dyn Any + Send>, ParamsError>,
    pub process: for<'a> fn(Box<dyn Any + Send>, &'a Context) -> BoxFuture<'a, Result<()>>,
}

inventory::collect!(EventDecl);

#[doc(hidden)]
pub fn decode<T: Event>(
    value: &serde_json::Value,
) -> std::result::Result<Box<dyn Any + Send>, ParamsError> {
    T::__from_json(value).map(|v| Box::new(v) as Box<dyn Any + Send>)
}

#[doc(hidden)]
pub fn process<T: Event>(event: Box<dyn Any + Send>, cx: &Context) -> BoxFuture<'_, Result<()>> {
    match event.downcast::<T>() {
        Ok(event) => Box::pin(event.process(cx)),
        Err(_) => Box::pin(async {
            Err(anyhow::anyhow!(
                "internal error: decoded params are not a `{}`",
                std::any::type_name::<T>()
            ))
        }),
    }
}

// A before filter is `async fn name(cx: &mut Context) -> Result<Flow>`.
// `call_filter` checks the three parts of that apart, each with its own
// message at the filter's path: the argument (`FilterArg`), the output
// (`FilterOutput`), and that the future is `Send` (rustc's own error, which
// points at the `.await` that holds what is not `Send`).

/// The argument of a before filter: `&mut Context` only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a before filter takes `&mut Context`, not `{Self}`",
    label = "this filter takes `{Self}`",
    note = "write the filter as `async fn name(cx: &mut Context) -> Result<Flow>`: it may change the context (`cx.insert(...)`) for the filters after it and the handler"
)]
pub trait FilterArg<'a> {
    fn from_context(cx: &'a mut Context) -> Self;
}

impl<'a> FilterArg<'a> for &'a mut Context {
    fn from_context(cx: &'a mut Context) -> Self {
        cx
    }
}

/// What calling a before filter gives: a future of `Result<Flow>`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a before filter is an `async fn` that returns `Result<Flow>`; calling this one gives `{Self}`",
    label = "not `async fn(&mut Context) -> Result<Flow>`",
    note = "write the filter as `async fn name(cx: &mut Context) -> Result<Flow> {{ ...; Ok(Flow::Continue) }}` (`Ok(Flow::Halt)` stops the chain)"
)]
pub trait FilterOutput<'a>: Future<Output = Result<Flow>> + 'a {}

// `do_not_recommend`: the message above, not rustc's on `Future`.
#[diagnostic::do_not_recommend]
impl<'a, T: Future<Output = Result<Flow>> + 'a> FilterOutput<'a> for T {}

#[doc(hidden)]
pub fn call_filter<'a, F, A, Fut>(f: F, cx: &'a mut Context) -> BoxFuture<'a, Result<Flow>>
where
    F: FnOnce(A) -> Fut,
    A: FilterArg<'a>,
    Fut: FilterOutput<'a> + Send,
{
    Box::pin(f(A::from_context(cx)))
}

/// One filter of a resolved chain.
///
/// ```rust,standalone_crate
/// use action_event::prelude::*;
/// async fn audit(_: &mut Context) -> Result<Flow> { Ok(Flow::Continue) }
/// #[derive(Serialize, Deserialize)]
/// #[action_event]
/// #[before_filter(audit)]
/// pub struct PingEvent {}
/// impl Process for PingEvent {
///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
/// }
/// let ping = action_event::registry().unwrap().get("ping").unwrap();
/// assert_eq!(ping.chain[0].path, "audit");
/// assert!(ping.chain[0].id.ends_with("::audit")); // the function's full path
/// ```
#[derive(Clone, Copy)]
pub struct ChainFilter {
    /// The path as written in `#[before_filter(...)]`.
    pub path: &'static str,
    /// The function's full path, e.g. `demo::events::log_params`.
    pub id: &'static str,
    pub(crate) run: FilterFn,
}

impl fmt::Debug for ChainFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path)
    }
}

/// One event as this binary runs it: settings and chain resolved.
///
/// ```rust,standalone_crate
/// # use action_event::prelude::*;
/// # #[derive(Serialize, Deserialize)] #[action_event(queue = "high")] struct PingEvent {}
/// # impl Process for PingEvent { async fn process(self, _: &Context) -> Result<()> { Ok(()) } }
/// let registry = action_event::registry().unwrap();
/// let ping = registry.get("ping").unwrap();
/// assert_eq!(ping.queue, "high");
/// assert!(ping.chain.is_empty());
/// ```
pub struct EventInfo {
    /// The event name.
    pub name: &'static str,
    /// The Rust type.
    pub type_name: &'static str,
    /// The queue it goes to by default.
    pub queue: &'static str,
    /// How many times a failure is retried.
    pub retries: u32,
    /// The limit on one run, if any.
    pub timeout: Option<Duration>,
    /// The before filters, in the order they run.
    pub chain: Vec<ChainFilter>,
    /// Base types, nearest first.
    pub ancestors: Vec<&'static str>,
    /// Its schedule, for a periodic event (`every`/`cron`).
    pub periodic: Option<crate::periodic::Periodic>,
    type_id: TypeId,
    pub(crate) handler: &'static Handler,
}

impl fmt::Debug for EventInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventInfo")
            .field("name", &self.name)
            .field("type_name", &self.type_name)
            .field("queue", &self.queue)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .field("chain", &self.chain)
            .field("ancestors", &self.ancestors)
            .field("periodic", &self.periodic)
            .finish_non_exhaustive()
    }
}

/// Every event of this binary.
///
/// ```rust,standalone_crate
/// use action_event::prelude::*;
/// #[derive(Serialize, Deserialize)]
/// #[action_event(queue = "high")]
/// pub struct HelloWorldEvent { pub name: String }
/// impl Process for HelloWorldEvent {
///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
/// }
/// let registry: &action_event::Registry = action_event::registry().unwrap();
/// assert_eq!(registry.names(), ["hello_world"]);
/// ```
#[derive(Debug)]
pub struct Registry {
    events: BTreeMap<&'static str, EventInfo>,
    by_type: HashMap<TypeId, &'static str>,
}

/// The registry of this binary, built on first use; an error if two events
/// share a name, `extends` forms a cycle, or a skip names a filter that is
/// not in the chain.
///
/// The registry holds the events of the whole binary: a doctest or test
/// that calls it is best its own crate (`standalone_crate`), so that the
/// events of other tests do not meet it.
///
/// ```rust,standalone_crate
/// let registry = action_event::registry().expect("events are consistent");
/// for event in registry.events() {
///     println!("{} on {}", event.name, event.queue);
/// }
/// ```
pub fn registry() -> std::result::Result<&'static Registry, Error> {
    static REGISTRY: OnceLock<std::result::Result<Registry, String>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| Registry::build(inventory::iter::<EventDecl>.into_iter().collect()))
        .as_ref()
        .map_err(|e| Error::Registry(e.clone()))
}

impl Registry {
    /// Builds a registry from declarations (the global one uses every
    /// declaration `inventory` collected).
    fn build(decls: Vec<&'static EventDecl>) -> std::result::Result<Registry, String> {
        let mut errors = Vec::new();
        let mut by_id: HashMap<TypeId, &'static EventDecl> = HashMap::new();
        for d in &decls {
            by_id.insert((d.type_id)(), d);
        }

        let mut events = BTreeMap::new();
        let mut by_type = HashMap::new();
        let mut names: BTreeMap<&'static str, &'static str> = BTreeMap::new();
        let mut sorted = decls.clone();
        sorted.sort_by_key(|d| (d.name, (d.type_name)()));

        for d in sorted {
            // Ancestors, nearest first; stops at a cycle or a missing parent.
            let mut lineage: Vec<&'static EventDecl> = vec![d];
            let mut broken = false;
            let mut cursor = d;
            while let Some(parent) = &cursor.parent {
                let Some(p) = by_id.get(&(parent.type_id)()) else {
                    errors.push(format!(
                        "`{}` extends `{}`, which is not registered (is its crate linked?)",
                        (cursor.type_name)(),
                        (parent.type_name)()
                    ));
                    broken = true;
                    break;
                };
                if let Some(start) = lineage.iter().position(|l| (l.type_id)() == (p.type_id)()) {
                    // `d` is in the cycle only when the walk comes back to
                    // it (an event below a cycle is not); each cycle is
                    // reported once, by its member with the smallest name.
                    if start == 0 {
                        let mut cycle: Vec<&str> =
                            lineage.iter().map(|l| (l.type_name)()).collect();
                        if cycle.iter().min() == Some(&(d.type_name)()) {
                            cycle.push((d.type_name)());
                            errors.push(format!(
                                "`extends` forms a cycle: {}",
                                cycle.join(" extends ")
                            ));
                        }
                    }
                    broken = true;
                    break;
                }
                lineage.push(p);
                cursor = p;
            }
            if broken {
                continue;
            }

            // Chain: root first; at each level drop what it skips from what it
            // inherited, then append its own filters (a filter added again
            // moves to its new place, so it runs once).
            let mut chain: Vec<ChainFilter> = Vec::new();
            for level in lineage.iter().rev() {
                for skip in level.skips {
                    let id = (skip.id)();
                    match chain.iter().position(|f| f.id == id) {
                        Some(i) => {
                            chain.remove(i);
                        }
                        None => errors.push(format!(
                            "{} skips before_filter `{}`, which is not in its chain ({})",
                            describe(level),
                            skip.path,
                            if chain.is_empty() {
                                "the chain is empty".to_string()
                            } else {
                                chain.iter().map(|f| f.path).collect::<Vec<_>>().join(", ")
                            }
                        )),
                    }
                }
                for f in level.filters {
                    let id = (f.id)();
                    chain.retain(|c| c.id != id);
                    chain.push(ChainFilter {
                        path: f.path,
                        id,
                        run: f.run,
                    });
                }
            }

            if d.base {
                continue;
            }
            let Some(handler) = &d.handler else {
                continue;
            };
            if let Some(other) = names.insert(d.name, (d.type_name)()) {
                errors.push(format!(
                    "two events are named `{}`: `{}` and `{}`; rename one with #[action_event(name = \"...\")]",
                    d.name,
                    other,
                    (d.type_name)()
                ));
                continue;
            }
            let queue = lineage
                .iter()
                .find_map(|l| l.queue)
                .unwrap_or(DEFAULT_QUEUE);
            let retries = lineage
                .iter()
                .find_map(|l| l.retries)
                .unwrap_or(DEFAULT_RETRIES);
            let timeout = lineage
                .iter()
                .find_map(|l| l.timeout_ms)
                .map(Duration::from_millis);
            let periodic = match &d.periodic {
                Some(p) => match crate::periodic::Periodic::from_decl(d.name, p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
                None => None,
            };
            by_type.insert((d.type_id)(), d.name);
            events.insert(
                d.name,
                EventInfo {
                    name: d.name,
                    type_name: (d.type_name)(),
                    queue,
                    retries,
                    timeout,
                    chain,
                    ancestors: lineage[1..].iter().map(|l| (l.type_name)()).collect(),
                    periodic,
                    type_id: (d.type_id)(),
                    handler,
                },
            );
        }
        if errors.is_empty() {
            Ok(Registry { events, by_type })
        } else {
            errors.sort();
            errors.dedup();
            Err(errors.join("\n"))
        }
    }

    /// The event with this name.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "high")]
    /// pub struct HelloWorldEvent { pub name: String }
    /// impl Process for HelloWorldEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let registry = action_event::registry().unwrap();
    /// assert_eq!(registry.get("hello_world").unwrap().queue, "high");
    /// assert!(registry.get("goodbye").is_none());
    /// ```
    pub fn get(&self, name: &str) -> Option<&EventInfo> {
        self.events.get(name)
    }

    /// The event whose struct is `T`.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "high")]
    /// pub struct HelloWorldEvent { pub name: String }
    /// impl Process for HelloWorldEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let registry = action_event::registry().unwrap();
    /// assert_eq!(registry.get_type::<HelloWorldEvent>().unwrap().name, "hello_world");
    /// ```
    pub fn get_type<T: 'static>(&self) -> Option<&EventInfo> {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|n| self.events.get(n))
    }

    /// Every event, sorted by name.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "high")]
    /// pub struct HelloWorldEvent { pub name: String }
    /// impl Process for HelloWorldEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let registry = action_event::registry().unwrap();
    /// for event in registry.events() {
    ///     println!("{} on {} ({} retries)", event.name, event.queue, event.retries);
    /// }
    /// assert_eq!(registry.events().count(), 1);
    /// ```
    pub fn events(&self) -> impl Iterator<Item = &EventInfo> {
        self.events.values()
    }

    /// Every event name, sorted.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "high")]
    /// pub struct HelloWorldEvent { pub name: String }
    /// impl Process for HelloWorldEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let registry = action_event::registry().unwrap();
    /// assert_eq!(registry.names(), ["hello_world"]);
    /// ```
    pub fn names(&self) -> Vec<String> {
        self.events.keys().map(|k| k.to_string()).collect()
    }

    /// One line per event: name, queue, retries, timeout, chain. The poller
    /// logs this at start.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// async fn log_params(_: &mut Context) -> Result<Flow> { Ok(Flow::Continue) }
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "high", timeout = "30s")]
    /// #[before_filter(log_params)]
    /// pub struct PingEvent {}
    /// impl Process for PingEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let table = action_event::registry().unwrap().describe();
    /// let type_name = std::any::type_name::<PingEvent>();
    /// assert_eq!(
    ///     table,
    ///     format!("ping ({type_name}) queue=high retries=10 timeout=30s chain=[log_params]\n")
    /// );
    /// ```
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for e in self.events.values() {
            let _ = writeln!(
                out,
                "{} ({}) queue={} retries={} timeout={} chain=[{}]",
                e.name,
                e.type_name,
                e.queue,
                e.retries,
                e.timeout
                    .map(|t| humantime::format_duration(t).to_string())
                    .unwrap_or_else(|| "none".into()),
                e.chain
                    .iter()
                    .map(|f| f.path)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out
    }

    /// Checks that `params` fit the struct of event `name` (when this binary
    /// knows it); the error names the event and the field path.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "high")]
    /// pub struct HelloWorldEvent { pub name: String }
    /// impl Process for HelloWorldEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let registry = action_event::registry().unwrap();
    /// assert!(registry.check_params("hello_world", &serde_json::json!({"name": "x"})).is_ok());
    /// let err = registry.check_params("hello_world", &serde_json::json!({"name": 5})).unwrap_err();
    /// assert!(err.to_string().contains("at `name`"), "{err}");
    /// // An event this binary does not know is not checked.
    /// assert!(registry.check_params("elsewhere", &serde_json::json!({})).is_ok());
    /// ```
    pub fn check_params(
        &self,
        name: &str,
        params: &serde_json::Value,
    ) -> std::result::Result<(), Error> {
        if let Some(e) = self.events.get(name) {
            (e.handler.decode)(params).map_err(|p| Error::Params {
                event: name.to_string(),
                path: p.path,
                message: p.message,
            })?;
        }
        Ok(())
    }
}

impl EventInfo {
    /// Whether this info is for struct `T`.
    ///
    /// ```rust,standalone_crate
    /// use action_event::prelude::*;
    /// #[derive(Serialize, Deserialize)]
    /// #[action_event(queue = "high")]
    /// pub struct HelloWorldEvent { pub name: String }
    /// impl Process for HelloWorldEvent {
    ///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
    /// }
    /// let registry = action_event::registry().unwrap();
    /// assert!(registry.get("hello_world").unwrap().is::<HelloWorldEvent>());
    /// ```
    pub fn is<T: 'static>(&self) -> bool {
        self.type_id == TypeId::of::<T>()
    }
}

fn describe(d: &EventDecl) -> String {
    if d.base {
        format!("base `{}`", (d.type_name)())
    } else {
        format!("event `{}` ({})", d.name, (d.type_name)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tn_a() -> &'static str {
        "A"
    }
    fn tn_b() -> &'static str {
        "B"
    }
    struct A;
    struct B;
    static CYCLE_A: EventDecl = EventDecl {
        type_name: tn_a,
        type_id: TypeId::of::<A>,
        name: "a",
        base: true,
        parent: Some(ParentDecl {
            type_name: tn_b,
            type_id: TypeId::of::<B>,
        }),
        queue: None,
        retries: None,
        timeout_ms: None,
        filters: &[],
        skips: &[],
        handler: None,
        periodic: None,
    };
    static CYCLE_B: EventDecl = EventDecl {
        type_name: tn_b,
        type_id: TypeId::of::<B>,
        name: "b",
        base: true,
        parent: Some(ParentDecl {
            type_name: tn_a,
            type_id: TypeId::of::<A>,
        }),
        queue: None,
        retries: None,
        timeout_ms: None,
        filters: &[],
        skips: &[],
        handler: None,
        periodic: None,
    };

    #[test]
    fn a_cycle_names_both_types() {
        let err = Registry::build(vec![&CYCLE_A, &CYCLE_B]).unwrap_err();
        assert_eq!(err, "`extends` forms a cycle: A extends B extends A");
    }
}
