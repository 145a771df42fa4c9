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
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt as _;

use crate::client::Client;
use crate::envelope::Envelope;
use crate::event::{Context, EventParams, Flow, Process, State};
use crate::{Error, Result};

/// A boxed, `Send` future: the one shape every filter and handler is erased to.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A filter, erased.
pub type FilterFn = for<'a> fn(&'a mut Context) -> BoxFuture<'a, Result<Flow>>;

/// The queue an event goes to when neither the call nor its handler says.
pub const DEFAULT_QUEUE: &str = "medium";

/// How many times a failed event is retried when no `retries = N` says.
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

/// Params that do not fit: the field path and serde's message.
#[doc(hidden)]
pub struct ParamsError {
    pub path: String,
    pub message: String,
}

/// How to decode and run one event type, erased. Generated code only.
#[doc(hidden)]
pub struct Handler {
    pub decode: fn(&serde_json::Value) -> std::result::Result<Box<dyn Any + Send>, ParamsError>,
    pub process: for<'a> fn(Box<dyn Any + Send>, &'a Context) -> BoxFuture<'a, Result<()>>,
}

inventory::collect!(EventDecl);

#[doc(hidden)]
pub fn decode<T: EventParams + Send + 'static>(
    value: &serde_json::Value,
) -> std::result::Result<Box<dyn Any + Send>, ParamsError> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Ok(Box::new(v)),
        Err(e) => Err(ParamsError {
            path: e.path().to_string(),
            message: e.into_inner().to_string(),
        }),
    }
}

#[doc(hidden)]
pub fn process<T: Process>(event: Box<dyn Any + Send>, cx: &Context) -> BoxFuture<'_, Result<()>> {
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

/// A before filter: `async fn name(cx: &mut Context) -> Result<Flow>`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a before filter",
    label = "expected `async fn(&mut Context) -> Result<Flow>` with a `Send` future",
    note = "write the filter as `async fn name(cx: &mut Context) -> Result<Flow> {{ ... Ok(Flow::Continue) }}`"
)]
pub trait Filter<'a> {
    fn call(self, cx: &'a mut Context) -> BoxFuture<'a, Result<Flow>>;
}

impl<'a, F, Fut> Filter<'a> for F
where
    F: FnOnce(&'a mut Context) -> Fut,
    Fut: Future<Output = Result<Flow>> + Send + 'a,
{
    fn call(self, cx: &'a mut Context) -> BoxFuture<'a, Result<Flow>> {
        Box::pin(self(cx))
    }
}

#[doc(hidden)]
pub fn call_filter<'a, F: Filter<'a>>(f: F, cx: &'a mut Context) -> BoxFuture<'a, Result<Flow>> {
    f.call(cx)
}

/// One filter of a resolved chain.
#[derive(Clone, Copy)]
pub struct ChainFilter {
    /// The path as written in `#[before_filter(...)]`.
    pub path: &'static str,
    /// The function's full path, e.g. `demo::events::log_params`.
    pub id: &'static str,
    run: FilterFn,
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
    type_id: TypeId,
    handler: &'static Handler,
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
            .finish_non_exhaustive()
    }
}

/// How one run of an event ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The chain and `process` returned Ok.
    Completed,
    /// A filter returned [`Flow::Halt`]: handled, not run, not failed.
    Halted {
        /// The filter that halted, as written.
        filter: &'static str,
    },
    /// It failed; see [`Failure`].
    Failed(Failure),
}

/// Why a run failed, and what should become of the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The kind of failure.
    pub kind: FailureKind,
    /// A message naming the event and, where it applies, the field.
    pub message: String,
}

/// The kinds of [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A filter or `process` returned `Err`: retried.
    Error,
    /// A filter or `process` panicked: retried.
    Panic,
    /// It ran past its timeout: retried.
    Timeout,
    /// The params do not fit the struct: dead at once (retrying cannot help).
    BadParams,
    /// No handler for this name in this binary: retried (a deploy may bring it).
    UnknownEvent,
}

impl FailureKind {
    /// Whether retrying may help.
    pub fn retryable(self) -> bool {
        !matches!(self, FailureKind::BadParams)
    }
}

/// Every event of this binary.
#[derive(Debug)]
pub struct Registry {
    events: BTreeMap<&'static str, EventInfo>,
    by_type: HashMap<TypeId, &'static str>,
}

/// The registry of this binary, built on first use; an error if two events
/// share a name, `extends` forms a cycle, or a skip names a filter that is
/// not in the chain.
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
                if lineage.iter().any(|l| (l.type_id)() == (p.type_id)()) {
                    if d.base || d.handler.is_some() {
                        let mut cycle: Vec<&str> =
                            lineage.iter().map(|l| (l.type_name)()).collect();
                        cycle.push((p.type_name)());
                        // Report a cycle once, from the member with the smallest name.
                        let first = cycle[..cycle.len() - 1].iter().min().copied();
                        if first == Some((d.type_name)()) {
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
    pub fn get(&self, name: &str) -> Option<&EventInfo> {
        self.events.get(name)
    }

    /// The event whose struct is `T`.
    pub fn get_type<T: 'static>(&self) -> Option<&EventInfo> {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|n| self.events.get(n))
    }

    /// Every event, sorted by name.
    pub fn events(&self) -> impl Iterator<Item = &EventInfo> {
        self.events.values()
    }

    /// Every event name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.events.keys().map(|k| k.to_string()).collect()
    }

    /// One line per event: name, queue, retries, timeout, chain. The poller
    /// logs this at start.
    ///
    /// ```rust,standalone_crate
    /// let table = action_event::registry().unwrap().describe();
    /// assert!(table.contains("events") || table.is_empty() || true);
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

    /// Runs one event in this process: decode the params, run the chain,
    /// then `process`, within the event's timeout; panics are caught.
    ///
    /// ```rust,standalone_crate
    /// # use action_event::prelude::*;
    /// # #[derive(Serialize, Deserialize)] #[action_event] struct AddEvent { a: i32 }
    /// # impl Process for AddEvent { async fn process(self, _: &Context) -> Result<()> {
    /// #     anyhow::ensure!(self.a > 0, "a must be positive"); Ok(()) } }
    /// use action_event::{Envelope, Outcome, State};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let registry = action_event::registry().unwrap();
    /// let env = Envelope::new("add", "medium", serde_json::json!({"a": 1}));
    /// assert_eq!(registry.dispatch(&env, State::new().into(), None).await, Outcome::Completed);
    /// # });
    /// ```
    pub async fn dispatch(
        &self,
        envelope: &Envelope,
        state: Arc<State>,
        client: Option<Client>,
    ) -> Outcome {
        let Some(event) = self.events.get(envelope.name.as_str()) else {
            return Outcome::Failed(Failure {
                kind: FailureKind::UnknownEvent,
                message: Error::UnknownEvent {
                    name: envelope.name.clone(),
                    known: self.names(),
                }
                .to_string(),
            });
        };
        let decoded = match (event.handler.decode)(&envelope.params) {
            Ok(d) => d,
            Err(p) => {
                return Outcome::Failed(Failure {
                    kind: FailureKind::BadParams,
                    message: Error::Params {
                        event: envelope.name.clone(),
                        path: p.path,
                        message: p.message,
                    }
                    .to_string(),
                });
            }
        };
        let mut cx = Context::new(envelope, state, client);
        let run = async {
            for f in &event.chain {
                match (f.run)(&mut cx).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Halt) => return Ok(Some(f.path)),
                    Err(e) => return Err(e.context(format!("before_filter `{}`", f.path))),
                }
            }
            (event.handler.process)(decoded, &cx).await.map(|()| None)
        };
        let guarded = AssertUnwindSafe(run).catch_unwind();
        let result = match event.timeout {
            Some(limit) => match tokio::time::timeout(limit, guarded).await {
                Ok(r) => r,
                Err(_) => {
                    return Outcome::Failed(Failure {
                        kind: FailureKind::Timeout,
                        message: format!(
                            "event `{}` timed out after {}",
                            envelope.name,
                            humantime::format_duration(limit)
                        ),
                    });
                }
            },
            None => guarded.await,
        };
        match result {
            Ok(Ok(None)) => Outcome::Completed,
            Ok(Ok(Some(filter))) => Outcome::Halted { filter },
            Ok(Err(e)) => Outcome::Failed(Failure {
                kind: FailureKind::Error,
                message: format!("event `{}`: {e:#}", envelope.name),
            }),
            Err(panic) => Outcome::Failed(Failure {
                kind: FailureKind::Panic,
                message: format!(
                    "event `{}` panicked: {}",
                    envelope.name,
                    panic_message(&*panic)
                ),
            }),
        }
    }
}

impl EventInfo {
    /// Whether this info is for struct `T`.
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

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
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
    };

    #[test]
    fn a_cycle_names_both_types() {
        let err = Registry::build(vec![&CYCLE_A, &CYCLE_B]).unwrap_err();
        assert_eq!(err, "`extends` forms a cycle: A extends B extends A");
    }
}
