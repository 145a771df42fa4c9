//! Periodic events: `#[action_event(every = "5m")]` or
//! `#[action_event(cron = "0 30 9 * * Mon-Fri", timezone = "Europe/Berlin")]`.
//!
//! Every poller runs a scheduler ([`scheduler`]) for the periodic events of
//! its binary, whatever queues it serves: the scheduler only queues a
//! tick's event, and whichever poller serves the event's queue runs it.
//! There is no leader to configure; the broker decides who queues each
//! tick:
//!
//! - SQLite and PostgreSQL: an atomic claim per tick. The table
//!   `periodic_ticks` holds the last tick queued per event; a poller moves
//!   it forward with a compare-and-set and inserts the tick's event in the
//!   same transaction, so a tick is queued exactly once, whichever pollers
//!   race for it.
//! - RabbitMQ: a lease. The queue `<prefix>periodic.lease` is a
//!   single-active-consumer queue holding one message, the last tick queued
//!   per event; the poller the broker delivers it to holds the lease and
//!   queues the ticks. For each tick it publishes the event and the new
//!   state message and acks the old state in one AMQP transaction (one
//!   commit): a holder killed before the commit leaves nothing. When the
//!   holder's connection dies the broker requeues the state message and
//!   hands it to another poller, which resumes after the last tick
//!   recorded.
//!
//! Each tick's event has a deterministic id, [`tick_id`] (event name +
//! scheduled time), so that a duplicate is recognisable. What remains on
//! RabbitMQ, whose transactions are not atomic across queues: a broker node
//! crashing in the middle of a commit, or a network partition cutting the
//! holder's node off from the lease queue while the event's queue is still
//! reachable, can keep the event without the new state (the next holder
//! queues that tick again, with the same id). SQLite and PostgreSQL have
//! no such window (one transaction).
//!
//! Missed ticks and the 5-second grace: see [`plan`] and [`Missed`].
//!
//! Params: a periodic event is queued with its `Default` value (a periodic
//! event without `Default` is a compile error).
//!
//! ```rust,standalone_crate
//! use action_event::prelude::*;
//!
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! #[action_event(every = "5m", queue = "low")]
//! pub struct SweepCartsEvent {}
//!
//! impl Process for SweepCartsEvent {
//!     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
//! }
//!
//! let sweep = action_event::registry().unwrap().get("sweep_carts").unwrap();
//! let periodic = sweep.periodic.as_ref().unwrap();
//! assert_eq!(periodic.schedule.to_string(), "every 5m");
//! ```

mod plan;
mod schedule;
pub mod scheduler;

use std::collections::BTreeMap;

pub use plan::{MISSED_AFTER, Missed, Step, plan};
pub use schedule::{Schedule, format_tick};

use crate::Error;
use crate::envelope::{Envelope, EventId};

/// `every`/`cron` of an `EventDecl`. Generated code only.
#[doc(hidden)]
pub struct PeriodicDecl {
    /// Milliseconds, 0 for a cron schedule.
    pub every_ms: u64,
    /// Empty for an `every` schedule.
    pub cron: &'static str,
    /// Empty for UTC.
    pub timezone: &'static str,
    pub skip_missed: bool,
    pub params: fn() -> Result<serde_json::Value, serde_json::Error>,
}

/// The params of a periodic event: its `Default`. Generated code only.
#[doc(hidden)]
pub fn periodic_params<T: Default + serde::Serialize>()
-> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(T::default())
}

/// A periodic event's schedule and policy, in the registry
/// ([`EventInfo::periodic`](crate::EventInfo::periodic)).
///
/// ```rust,standalone_crate
/// use action_event::prelude::*;
/// #[derive(Default, Serialize, Deserialize)]
/// #[action_event(cron = "0 30 9 * * Mon-Fri", timezone = "Europe/Berlin", missed = "skip")]
/// pub struct DigestEvent {}
/// impl Process for DigestEvent {
///     async fn process(self, _: &Context) -> Result<()> { Ok(()) }
/// }
/// let p = action_event::registry().unwrap().get("digest").unwrap().periodic.clone().unwrap();
/// assert_eq!(p.schedule.to_string(), "cron 0 30 9 * * Mon-Fri (Europe/Berlin)");
/// assert_eq!(p.missed, action_event::periodic::Missed::Skip);
/// ```
#[derive(Clone, Debug)]
pub struct Periodic {
    /// When its ticks fall.
    pub schedule: Schedule,
    /// What happens to ticks every poller missed.
    pub missed: Missed,
    pub(crate) params: fn() -> Result<serde_json::Value, serde_json::Error>,
}

impl Periodic {
    pub(crate) fn from_decl(name: &str, d: &PeriodicDecl) -> Result<Periodic, String> {
        let schedule = if d.cron.is_empty() {
            Schedule::every_ms(d.every_ms)
        } else {
            Schedule::cron(d.cron, Some(d.timezone).filter(|t| !t.is_empty()))
        }
        .map_err(|e| format!("periodic event `{name}`: {e}"))?;
        Ok(Periodic {
            schedule,
            missed: if d.skip_missed {
                Missed::Skip
            } else {
                Missed::Once
            },
            params: d.params,
        })
    }

    /// The event queued for `tick`: its `Default` params, the id
    /// [`tick_id`], on the event's queue.
    pub(crate) fn envelope(&self, name: &str, queue: &str, tick: i64) -> Result<Envelope, Error> {
        let params = (self.params)().map_err(|e| {
            Error::Registry(format!(
                "periodic event `{name}`: its Default params do not serialize: {e}"
            ))
        })?;
        let mut env = Envelope::new(name, queue, params);
        env.id = tick_id(name, tick);
        Ok(env)
    }
}

/// The id of the event queued for the tick of `event` at `tick_ms`
/// (milliseconds since the Unix epoch): a UUID (version 8) made of the
/// tick's time (first 48 bits, so ids sort by tick like UUID v7) and a hash
/// of the event name. The same tick always gets the same id, on every
/// poller: a duplicate is recognisable by it.
///
/// ```
/// use action_event::periodic::{tick_id, tick_of};
/// let a = tick_id("sweep_carts", 1_700_000_000_000);
/// assert_eq!(a, tick_id("sweep_carts", 1_700_000_000_000));
/// assert_ne!(a, tick_id("sweep_carts", 1_700_000_001_000));
/// assert_ne!(a, tick_id("digest", 1_700_000_000_000));
/// assert_eq!(tick_of(&a), Some(1_700_000_000_000));
/// ```
pub fn tick_id(event: &str, tick_ms: i64) -> EventId {
    let mut bytes = [0u8; 16];
    let ms = u64::try_from(tick_ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    let h1 = fnv1a(event.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let h2 = fnv1a(event.as_bytes(), h1 ^ 0x9e37_79b9_7f4a_7c15);
    bytes[6..14].copy_from_slice(&h1.to_be_bytes());
    bytes[14..].copy_from_slice(&h2.to_be_bytes()[..2]);
    EventId(uuid::Uuid::new_v8(bytes))
}

/// The tick time inside a [`tick_id`] (`None` for other ids).
pub fn tick_of(id: &EventId) -> Option<i64> {
    if id.0.get_version_num() != 8 {
        return None;
    }
    let b = id.0.as_bytes();
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&b[..6]);
    i64::try_from(u64::from_be_bytes(ms)).ok()
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a backend knows of the periodic ticks (see
/// [`Broker::tick_state`](crate::broker::Broker::tick_state)).
///
/// ```
/// let s = action_event::periodic::TickState::default();
/// assert!(!s.holder && s.last.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickState {
    /// Whether this broker may queue ticks now (SQLite and PostgreSQL:
    /// always; RabbitMQ: while it holds the lease).
    pub holder: bool,
    /// The last tick queued per event name (milliseconds since the epoch).
    pub last: BTreeMap<String, i64>,
}

/// One tick to claim (see [`Broker::tick_claim`](crate::broker::Broker::tick_claim)).
///
/// ```
/// let c = action_event::periodic::TickClaim {
///     name: "sweep".into(), expected: None, tick: 1000, envelope: None,
/// };
/// assert_eq!(c.tick, 1000);
/// ```
#[derive(Clone, Debug)]
pub struct TickClaim {
    /// The event name.
    pub name: String,
    /// The last tick queued as the caller saw it (`None`: never).
    pub expected: Option<i64>,
    /// The tick that becomes the last one.
    pub tick: i64,
    /// The event to queue with it (`None` to skip missed ticks).
    pub envelope: Option<Envelope>,
}
