//! The RabbitMQ backend (`amqp://` and `amqps://`), on lapin.
//!
//! # URL
//!
//! `amqp://user:pass@host:5672/vhost?heartbeat=30&prefix=myapp.&publish_timeout=30s&prefetch=32`,
//! or `amqps://user:pass@host:5671/vhost?cacertfile=/etc/myapp/ca.pem` over TLS.
//! lapin's own query options (`heartbeat`, `frame_max`, `channel_max`, ...)
//! pass through (heartbeat 30 s and `frame_max` 131072 when none is given);
//! ours are taken out before lapin sees the URL:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `prefix` | `action_event.` | put before every queue and exchange name, so several apps share a vhost |
//! | `publish_timeout` | `30s` | how long a `publish` waits for the broker during an outage before it fails |
//! | `prefetch` | `32` | unacked deliveries per queue consumer (see *Strict priority*) |
//! | `consumer_timeout` | `30m` | the broker's `consumer_timeout`: an event still running after a third of it is moved to a fresh delivery (see *Long events*) |
//! | `cacertfile` | none | `amqps://` only: a PEM file of CA certificates trusted besides the system's |
//!
//! # TLS (`amqps://`)
//!
//! rustls (ring), with lapin's `rustls-native-certs` store: the server's
//! certificate must chain to a CA the system trusts and name the URL's host.
//! A private CA is trusted by `cacertfile=/path/ca.pem` (added to the system
//! roots, passed to lapin as `OwnedTLSConfig::cert_chain`), or by the
//! environment variable `SSL_CERT_FILE=/path/ca.pem` (or `SSL_CERT_DIR`),
//! which rustls-native-certs reads *instead of* the system store. Port 5671
//! when the URL has none. No client certificate is sent.
//!
//! [`AmqpBroker::open`] first opens the transport once (TCP, and the TLS
//! handshake for `amqps://`), and so does every later `amqps://` connection
//! that lapin will recover: lapin retries a failing connect forever once
//! recovery is on, so without this probe a wrong port or an untrusted
//! certificate would hang `open` and leave a retrying thread behind. With it the error names the cause, e.g. `TLS handshake with
//! mq.example.com:5671 failed: invalid peer certificate: UnknownIssuer`, with
//! a hint at `cacertfile`/`SSL_CERT_FILE`, and the URL's password redacted.
//!
//! `frame_max` is given explicitly because lapin sizes each connection's
//! read and write buffers (32 frames each) from it: without it, lapin starts
//! them at 32 x 4 KiB and, once the broker offers 128 KiB, grows them by
//! writing 4 MiB of zeros each, 8 MiB of touched memory per connection (a
//! poller has three) before the first event. Told up front, lapin allocates
//! the same 4 MiB zeroed by the OS and only touches what traffic uses.
//!
//! # Topology (see `docs/wire-format.md`)
//!
//! Declared idempotently and lazily, on every (re)connect:
//! - `<prefix><queue>`: one durable classic queue per queue name, no arguments.
//! - `<prefix>dead`: durable queue of [`DeadEvent`] JSON documents.
//! - the delay ladder: for each level `L` ms in use, a durable fanout exchange
//!   and a durable queue both named `<prefix>delay.<L>`, the queue with
//!   `x-message-ttl = L` and `x-dead-letter-exchange = ""` and *no*
//!   dead-letter routing key. A delayed event is published to the exchange
//!   with the routing key `<prefix><queue>`; when its TTL runs out the
//!   default exchange routes it back to its work queue by that key. Every
//!   message in one level queue has the same TTL, so no head-of-line
//!   blocking: a 1 s delay queued after a 3 s one is not held back. A delay
//!   is split into hops (largest level that fits, or a level at most
//!   100 ms / 5 % too long); an event that comes back before its
//!   `run_at` (header `x-action-event-run-at`) is not handed out but sent
//!   through the ladder again, as a *fresh* publish: the `x-death` headers
//!   that make RabbitMQ 3.x silently drop a message that passes twice
//!   through one queue are never carried over.
//!
//! # Publishing
//!
//! One publish connection with one confirm channel shared by every caller;
//! each `publish` awaits only its own confirm, so concurrent publishes
//! pipeline. Messages are persistent, `mandatory` (an unroutable message is
//! an error), with no property but those two and `content_type` (see
//! docs/wire-format.md). A confirm lost in a reconnect is republished
//! (at-least-once: consumers dedupe by the envelope's `id` when it
//! matters). During an outage `publish` waits for the connection to come back
//! up to `publish_timeout`.
//!
//! # Strict priority, fast
//!
//! `take(["high", "medium", "low"])` must not start a medium event while a
//! high one is ready in the broker. `basic.get` polling is strict but ~8x
//! slower than a consumer; merged consumers are fast but not strict. This
//! backend combines them:
//!
//! - Each queue gets its own consumer (own channel, `prefetch` unacked)
//!   feeding a local buffer; a lower queue is subscribed only once a `take`
//!   actually reaches its level. `take` serves the highest non-empty buffer.
//! - Before an event of level *i* is handed out, every higher level *j*
//!   must be *clear*: its buffer empty and the broker holding nothing ready
//!   for it. Proving that is a **check** on *j*'s own channel: `basic.get`
//!   (a hit is a level-*j* event and is served instead), then a passive
//!   `queue.declare` as a barrier: the broker sends every delivery it pushed
//!   to our consumer before that reply, and lapin has put them into the
//!   consumer's stream before the reply resolves, so after draining the
//!   stream an empty buffer means nothing of level *j* was in flight either.
//!   This also covers backlog present before the poller starts (the first
//!   check on a new consumer waits out its initial deliveries).
//! - The check result is cached ("clear") until a delivery for *j* arrives,
//!   and it is not cached when *j*'s consumer was at its prefetch limit (the
//!   broker may then hold ready messages it cannot push). So checks happen
//!   when switching down a level, not per event: a steady stream of medium
//!   events while high is idle costs no extra round trip, and a new high
//!   event is pushed by the broker at once and served next.
//! - A level is checked only when there is something to go down for: a
//!   lower level has events buffered, or has no consumer yet (reaching it
//!   subscribes it; then at most once per 100 ms while the level above is
//!   found busy). Otherwise an empty buffer just waits for the broker's next
//!   push: a check is a round trip through the busiest queue.
//! - Buffered events that are not handed out are returned (`nack`,
//!   `requeue: true`) by [`AmqpBroker::close`], when a level has not been
//!   reached by any `take` for 5 s (its consumer is cancelled, so other
//!   pollers can run them; its channel stays open until the events handed
//!   out from it are settled or renewed, since closing it would requeue
//!   them too), and by the broker itself when the connection or the broker
//!   is dropped.
//!
//! Guarantee: within one process, an event is handed out only if every
//! higher queue was empty in the broker at a moment after the previous event
//! of that higher queue arrived. Across processes it is strict *at dequeue*:
//! a process's buffered-but-not-started events count as taken, so start
//! order between two pollers can differ by at most the events a poller has
//! buffered beyond its free slots; keep `prefetch` at or below the poller's
//! concurrency to keep that near zero. When the check sees other consumers on
//! the higher queue, the switch down first waits 10 ms (at most once per
//! second per queue) so that events other pollers already hold start first.
//!
//! # Long events: RabbitMQ's `consumer_timeout`
//!
//! RabbitMQ (3.8.15+) closes a channel with `PRECONDITION_FAILED` when one
//! of its deliveries stays unacked longer than `consumer_timeout` (30 min by
//! default; on 3.10 a global `rabbitmq.conf` setting) and requeues *every*
//! unacked delivery of that channel, so the other events in flight on it
//! would run again too. Measured on 3.10.8: `basic.get` deliveries count as
//! well, and the check runs on the channel's tick (`channel_tick_interval`,
//! 60 s by default), so the channel closes between `consumer_timeout` and
//! `consumer_timeout` + 60 s after the delivery.
//!
//! So no delivery of this backend stays unacked that long: when a handed-out
//! event is still running a third of the URL's `consumer_timeout` after it
//! was handed out (or last renewed), a renewer task (ticking every
//! `consumer_timeout / 12`, at most every second) *renews* it:
//!
//! 1. on a channel of the consume connection kept for this event, declare
//!    the durable queue `<prefix>hold.<event id>.<nonce>` (`nonce`: random,
//!    one per hand-out) with `x-message-ttl` = 10 s,
//!    `x-dead-letter-exchange` = `""`, `x-dead-letter-routing-key` =
//!    `<prefix><queue>` and `x-expires` = 2 x `consumer_timeout` + 60 s;
//! 2. publish a copy of the message there (confirmed, on the publish
//!    connection, `x-death` headers stripped);
//! 3. `basic.get` it (unacked) on the event's channel: the copy is now the
//!    event's delivery, with a fresh broker clock;
//! 4. ack the previous delivery (the consumer's, or the previous copy).
//!
//! Renewals repeat every third of `consumer_timeout` with the same queue
//! and channel. A lock per delivery keeps renewals and
//! `ack`/`retry`/`dead`/`release` apart. Settling a renewed event settles
//! the copy, then deletes the hold queue and closes its channel; `release`
//! rejects the copy without requeue, which dead-letters it to its work
//! queue at once. If the poller dies, the broker requeues the
//! unacked copy into the hold queue, where its TTL has run out (or runs out
//! within 10 s), and dead-letters it back to `<prefix><queue>`: another
//! poller runs it (at least once; it arrives with `redelivered = false` and
//! an `x-death` header). A crash in the middle of a renewal leaves two
//! copies: the event runs again, never is lost. `x-expires` only cleans up
//! after crashes: RabbitMQ deletes an unused queue even while it holds an
//! unacked message (measured), so it is kept well above the renewal period.
//! Limits: renewals are timed from the hand-out, while the broker's clock
//! starts when it pushed the delivery to the consumer (buffered deliveries
//! wait at most a few seconds, see *Strict priority*); and the way back after
//! a crash is RabbitMQ's own dead-lettering, which is not confirmed
//! internally on classic queues (a broker crash at that moment could lose
//! the event).
//!
//! If the broker closes a channel anyway (its `consumer_timeout` is lower
//! than the URL's, or a renewal kept failing), the consume side resubscribes
//! on a new channel and goes on; the renewer logs a warning naming each
//! event whose delivery was lost that way (they run again), and the ack of
//! the first run is reported as not sent. The closed channel's consumer is
//! kept, not dropped: with lapin 4.12.3 dropping it would make lapin
//! reconnect the whole consume connection (see `DEAD_CONSUMERS`).
//!
//! # Dead letters
//!
//! `dead` publishes the [`DeadEvent`] JSON to `<prefix>dead` (confirmed), then
//! acks. `dead_list`, `dead_retry` and `dead_purge` browse that queue on one
//! channel of their own: `basic.get` without ack until the queue looks empty
//! (everything fetched stays unacked on that channel), ack what is retried
//! (after its confirmed republish) or purged, then `nack` the rest with
//! `requeue: true`. O(n) in dead events; two admin commands at once each see
//! only what the other does not hold.
//!
//! # Connection loss
//!
//! `take` never fails for a transient loss: it waits and returns `Ok(None)`
//! after `wait`. An ack that fails after a loss is logged, not returned: the
//! broker redelivers that event (at-least-once; it ran and will run again).
//!
//! **Consume side: no lapin recovery; generations rebuilt here.** The
//! consume connection, its channels, consumers and the events they buffered
//! form one *generation*, numbered; every consumer records the generation
//! it was made in. Once the connection is not connected (closed by the
//! broker, the socket lost, the broker stopped, a missed heartbeat) the whole
//! generation is dropped at once: lapin errs and ends each of its consumers
//! (`Err`, then the end of the stream), so a waiting `take` wakes up, and
//! the next `take` forgets every consumer of that generation with its
//! buffer (the broker has requeued those events), then connects anew, at
//! most once per pause (200 ms doubling to 5 s, ±25 % jitter; reset on
//! success) and never blocking on another task's attempt. Consumers are
//! made again, lazily, by the `take`s that reach their levels. Events
//! handed out from the old generation fail to ack and come back
//! (`redelivered`). A consumer that errs or ends on a live connection (its
//! channel closed, its queue deleted) is made again on a new channel of the
//! same connection. Why not lapin's `enable_auto_recover()` here (measured
//! with it, RabbitMQ 3.10.8): after a broker restart lapin re-opened the old
//! channel with its consumer while this module had already made a new one;
//! the broker then pushed a full prefetch to the old consumer, which no
//! `take` read any more (`rabbitmqctl list_channels`: channel 1 with 32
//! unacked, channel 2 with 0, on each poller's connection). Those events
//! never came back: 32 of 2,000 missing at broker level, pollers stalled at
//! 4,952 of 5,000. One owner of recovery rules that out.
//!
//! **Publish side: lapin recovery.** The publish connection keeps
//! `enable_auto_recover()` with unlimited retries, plus a supervisor here: a
//! connection that ended up closed is rebuilt, and topology is declared
//! again after any reconnect (an epoch bumped from the connection's events).
//! A publish whose confirm is lost in a reconnect is published again.
//!
//! # Poller status across machines
//!
//! [`Broker::announce`] makes a running poller visible: a task with a
//! connection of its own (no lapin recovery) declares the durable fanout
//! exchange `<prefix>status` and a server-named, exclusive, auto-delete
//! queue bound to it, and consumes that queue (`no_ack`). Every ping (a
//! message with `reply_to`) is answered with the poller's [`PollerReport`]
//! as JSON, published to the default exchange with routing key `reply_to`.
//! When the consumer ends or errors (connection loss, or the broker cancels
//! it because the queue was deleted), the task rebuilds connection, queue,
//! binding and consumer at once, then with backoff while that fails (200 ms
//! doubling to 10 s), while the broker is open; it logs the loss and, once
//! rebuilt, `answering status requests again`. It stops once the broker is
//! closed or dropped. A poller that dies takes its queue with its connection, so it
//! drops out of the list by itself.
//!
//! [`Broker::pollers`] uses direct reply-to: on one channel of the publish
//! connection it consumes `amq.rabbitmq.reply-to` (`no_ack`) *first*, then
//! publishes one ping to `<prefix>status` with `reply_to =
//! amq.rabbitmq.reply-to`, collects the replies for `wait` and closes the
//! channel. Nothing is declared per request but the (idempotent) exchange;
//! with no poller bound the ping is simply dropped.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), action_event::Error> {
//! use std::time::Duration;
//! use action_event::broker::{Broker, amqp::AmqpBroker};
//! let broker = AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f?prefix=shop.").await?;
//! broker.publish(&action_event::Envelope::new("send_mail", "high", serde_json::json!({}))).await?;
//! let queues = ["high".to_string(), "low".to_string()];
//! if let Some(delivery) = broker.take(&queues, Duration::from_secs(1)).await? {
//!     broker.ack(&delivery).await?;
//! }
//! broker.close().await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery as LapinDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ErrorKind,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Broker, DeadEvent, DeadFilter, Delivery, PollerReport, Presence, QueueDepth};
use crate::envelope::{Envelope, now_ms};
use crate::{Error, redact_url};

/// Queue-name prefix used when the URL has no `prefix` option.
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_PREFIX, "action_event.");
/// ```
pub const DEFAULT_PREFIX: &str = "action_event.";
/// How long `publish` waits during an outage when the URL has no `publish_timeout`.
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_PUBLISH_TIMEOUT.as_secs(), 30);
/// ```
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Unacked deliveries per queue consumer when the URL has no `prefetch`.
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_PREFETCH, 32);
/// ```
pub const DEFAULT_PREFETCH: u16 = 32;
/// The broker's `consumer_timeout` assumed when the URL has none
/// (RabbitMQ's default, 30 minutes). Events still running after a third of
/// it are renewed (see the module docs).
///
/// ```
/// assert_eq!(action_event::broker::amqp::DEFAULT_CONSUMER_TIMEOUT.as_secs(), 30 * 60);
/// ```
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `frame_max` asked of the broker when the URL has none (RabbitMQ's default).
const DEFAULT_FRAME_MAX: u32 = 131_072;

/// Header of dead events: the event name (when known).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_NAME, "x-action-event-name");
/// ```
pub const HEADER_NAME: &str = "x-action-event-name";
/// Header of dead events: the logical queue name (without prefix).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_QUEUE, "x-action-event-queue");
/// ```
pub const HEADER_QUEUE: &str = "x-action-event-queue";
/// Header of delayed events: not to run before this time (ms since the
/// Unix epoch). Event messages carry no other header: everything else is
/// in the body (see `docs/wire-format.md`).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_RUN_AT, "x-action-event-run-at");
/// ```
pub const HEADER_RUN_AT: &str = "x-action-event-run-at";
/// Header on dead events: when it died (ms since the Unix epoch).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_DIED_AT, "x-action-event-died-at");
/// ```
pub const HEADER_DIED_AT: &str = "x-action-event-died-at";

/// The delay ladder's levels, in ms.
const LEVELS_MS: &[u64] = &[
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000, 120_000, 300_000, 600_000,
    1_200_000, 3_600_000, 7_200_000, 14_400_000, 43_200_000, 86_400_000,
];
/// How long [`probe`] waits for the socket (and the TLS handshake).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A single broker round trip that takes longer than this counts as lost.
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Buffered events of a level no `take` reached for this long go back to the broker.
const HOLD: Duration = Duration::from_secs(5);
/// How long a switch down waits for other pollers' already-delivered events.
const SETTLE: Duration = Duration::from_millis(10);
/// At most one settle wait per queue in this interval.
const SETTLE_EVERY: Duration = Duration::from_secs(1);
/// `nack` back to the queue (spelled out: lapin's default does not requeue).
const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};
/// An event this close to its `run_at` is held instead of re-delayed.
const SHORT_WAIT_MS: u64 = 50;
/// After a check found a level not clear, how long it is not checked again
/// only to reach (subscribe) a lower level (see `select`).
const RECHECK: Duration = Duration::from_millis(100);
/// First pause between consume connection attempts; doubles up to [`CONS_RETRY_MAX`].
const CONS_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest pause between consume connection attempts.
const CONS_RETRY_MAX: Duration = Duration::from_secs(5);
/// `x-message-ttl` of a hold queue: how long a renewal copy may wait to be
/// fetched, and at most how long it stays there after its poller died.
const HOLD_TTL: Duration = Duration::from_secs(10);
/// RabbitMQ's default `channel_tick_interval`: it checks `consumer_timeout`
/// that often.
const BROKER_TICK: Duration = Duration::from_secs(60);

/// The RabbitMQ backend. See the module docs for the design.
///
/// ```no_run
/// # async fn run() -> Result<(), action_event::Error> {
/// use action_event::broker::{Broker, amqp::AmqpBroker};
/// let broker = AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f?prefix=myapp.").await?;
/// broker.publish(&action_event::Envelope::new("hello_world", "high", serde_json::json!({}))).await?;
/// # Ok(()) }
/// ```
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    redacted: String,
    lapin_url: String,
    tls: OwnedTLSConfig,
    prefix: String,
    publish_timeout: Duration,
    prefetch: u16,
    consumer_timeout: Duration,
    closed: AtomicBool,
    /// Handed-out deliveries not settled yet, for the renewer.
    held: Mutex<HashMap<u64, Weak<Tag>>>,
    held_seq: AtomicU64,

    publisher: Mutex<Option<PubConn>>,
    pub_build: tokio::sync::Mutex<()>,
    pub_epoch: Arc<AtomicU64>,
    /// (publish epoch, names declared in it).
    declared: Mutex<(u64, HashSet<String>)>,
    /// Everything ever declared, for [`AmqpBroker::delete_topology`]: (is_exchange, name).
    all_declared: Mutex<BTreeSet<(bool, String)>>,

    /// The current consume generation (see *Connection loss*).
    consumer: Mutex<Option<ConsConn>>,
    cons_build: tokio::sync::Mutex<()>,
    /// When the next consume connection attempt may start, and the pause after it.
    cons_retry: Mutex<(Option<Instant>, Duration)>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    notify: Notify,
    pump: tokio::sync::Mutex<()>,
    /// Woken (`notify_waiters`, no permit kept) when the pump is released.
    pump_free: Notify,
    /// Generation ids of consume connections.
    conn_seq: AtomicU64,
}

#[derive(Clone)]
struct PubConn {
    conn: Arc<Connection>,
    confirm: Channel,
}

/// One consume generation: a connection without lapin recovery, and its id,
/// which every [`Sub`] made on it carries.
#[derive(Clone)]
struct ConsConn {
    conn: Arc<Connection>,
    id: u64,
}

/// One queue on the consume side.
struct Slot {
    name: String,
    full: String,
    st: Mutex<SlotState>,
    check: tokio::sync::Mutex<()>,
    sub_lock: tokio::sync::Mutex<()>,
}

struct SlotState {
    sub: Option<Sub>,
    buf: VecDeque<LapinDelivery>,
    /// A check proved the broker holds nothing ready, and nothing arrived since.
    clear: bool,
    arrivals: u64,
    last_reached: std::time::Instant,
    last_settle: Option<std::time::Instant>,
    /// A check found this level not clear: until then, it is not checked
    /// again only to reach a lower level that has no consumer yet.
    busy_until: Option<std::time::Instant>,
}

impl SlotState {
    /// A delivery of the current consumer: buffered and counted unacked.
    fn arrived(&mut self, d: LapinDelivery) {
        if let Some(sub) = &self.sub {
            sub.unacked.fetch_add(1, Ordering::SeqCst);
        }
        self.buf.push_back(d);
        self.clear = false;
        self.arrivals += 1;
    }
}

#[derive(Clone)]
struct Sub {
    channel: Channel,
    consumer: Consumer,
    /// The generation ([`ConsConn::id`]) it was made in.
    conn_id: u64,
    unacked: Arc<AtomicUsize>,
    /// Deliveries of this channel handed out and not settled nor renewed:
    /// while there are any, the channel is not closed (that would requeue
    /// them, and they would run twice).
    in_hand: Arc<AtomicUsize>,
}

/// Where a handed-out delivery came from: the counters of its consumer
/// channel.
struct Origin {
    /// The consumer's count of unacked deliveries (none for `basic.get`).
    unacked: Option<Arc<AtomicUsize>>,
    in_hand: Arc<AtomicUsize>,
}

/// What a [`Delivery`] of this backend carries in its `tag`, as an
/// `Arc<Tag>` shared with the renewer (see *Long events*).
struct Tag {
    /// Key in `Inner::held`; 0 when not registered.
    seq: u64,
    /// The broker delivery that stands for the event now. Renewals and
    /// settles hold this lock, so they never interleave.
    cur: tokio::sync::Mutex<Current>,
    /// The consumer's count of unacked deliveries (none for `basic.get`).
    unacked: Option<Arc<AtomicUsize>>,
    /// The count of handed-out deliveries on its consumer's channel.
    in_hand: Option<Arc<AtomicUsize>>,
    /// Whether this delivery still counts in `unacked`.
    counted: AtomicBool,
    /// Whether it still counts in `in_hand`.
    held_open: AtomicBool,
    done: AtomicBool,
    /// A renewal task is running for it.
    renewing: AtomicBool,
    /// Its delivery was lost (channel closed) and that was logged.
    lost: AtomicBool,
    /// The logical queue.
    queue: String,
    full_queue: String,
    properties: BasicProperties,
    /// The message, for renewal copies and [`Tag::ident`].
    body: Vec<u8>,
    taken: std::time::Instant,
}

/// The delivery a [`Tag`] settles.
struct Current {
    acker: lapin::Acker,
    /// Once renewed: the hold queue and the channel the copy is unacked on.
    hold: Option<(String, Channel)>,
    /// When this delivery was handed out or fetched.
    since: std::time::Instant,
    renewals: u32,
}

impl Tag {
    /// This delivery is done with (its ack or nack is due, or it was
    /// renewed): it no longer counts against the prefetch. (Counting it until
    /// the broker has the ack would make a level look full while acks are
    /// on their way, and a full level is checked with `basic.get`.)
    fn uncount(&self) {
        if self.counted.swap(false, Ordering::SeqCst)
            && let Some(u) = &self.unacked
        {
            let _ = u.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        }
    }

    /// Its ack or nack was sent (or it was renewed): it no longer keeps its
    /// consumer channel open.
    fn release_channel(&self) {
        if self.held_open.swap(false, Ordering::SeqCst)
            && let Some(u) = &self.in_hand
        {
            let _ = u.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        }
    }

    /// The event id and name, for logs and the hold queue name: from the
    /// envelope in the body (event messages carry them nowhere else), else
    /// from `message_id` and `type` (a foreign message), else `?`.
    fn ident(&self) -> (String, String) {
        ident_of(&self.properties, &self.body)
    }

    /// The event id (see [`Tag::ident`]).
    fn event_id(&self) -> String {
        self.ident().0
    }
}

/// See [`Tag::ident`].
fn ident_of(props: &BasicProperties, body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Ident {
        id: String,
        name: String,
    }
    if let Ok(i) = serde_json::from_slice::<Ident>(body) {
        return (i.id, i.name);
    }
    let prop = |p: &Option<ShortString>| {
        p.as_ref()
            .map_or_else(|| "?".to_string(), |s| s.as_str().to_string())
    };
    (prop(props.message_id()), prop(props.kind()))
}

enum Check {
    /// `basic.get` found an event of this level.
    Got(Box<LapinDelivery>, Origin),
    /// Something arrived in the buffer meanwhile: decide again.
    Retry,
    /// Nothing ready for this level: lower levels may be served.
    Clear,
    /// Could not tell (connection trouble): do not go lower.
    Unknown,
}

enum Pick {
    /// The delivery and where it came from (none only if its consumer was
    /// dropped meanwhile).
    Got(Arc<Slot>, Box<LapinDelivery>, Option<Origin>),
    Retry,
    Wait {
        poll_soon: bool,
    },
}

/// A topology failure: `Fatal` is a configuration problem (reported),
/// `Transient` a connection problem (retried).
enum TopoErr {
    Fatal(Error),
    Transient(String),
}

/// Parsed URL.
struct Config {
    lapin_url: String,
    /// TLS settings for `amqps://` (extra trusted CAs from `cacertfile`).
    tls: OwnedTLSConfig,
    prefix: String,
    publish_timeout: Duration,
    prefetch: u16,
    consumer_timeout: Duration,
}

fn parse_url(url: &str) -> Result<Config, Error> {
    let bad = |message: String| Error::BadUrl {
        url: redact_url(url),
        message,
    };
    let mut u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if u.scheme() != "amqp" && u.scheme() != "amqps" {
        return Err(bad(format!(
            "expected `amqp://` or `amqps://`, got `{}://`",
            u.scheme()
        )));
    }
    let mut prefix = DEFAULT_PREFIX.to_string();
    let mut publish_timeout = DEFAULT_PUBLISH_TIMEOUT;
    let mut prefetch = DEFAULT_PREFETCH;
    let mut consumer_timeout = DEFAULT_CONSUMER_TIMEOUT;
    let mut tls = OwnedTLSConfig::default();
    let mut rest: Vec<(String, String)> = Vec::new();
    let mut has_heartbeat = false;
    let mut has_frame_max = false;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "prefix" => prefix = v.into_owned(),
            "publish_timeout" => {
                publish_timeout = humantime::parse_duration(&v)
                    .map_err(|e| bad(format!("`publish_timeout={v}`: {e} (e.g. `30s`)")))?;
            }
            "prefetch" => {
                prefetch = v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    bad(format!("`prefetch={v}`: expected a number from 1 to 65535"))
                })?;
            }
            "consumer_timeout" => {
                consumer_timeout = humantime::parse_duration(&v)
                    .ok()
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or_else(|| {
                        bad(format!(
                            "`consumer_timeout={v}`: expected the broker's consumer_timeout, at least 1s (e.g. `30m`)"
                        ))
                    })?;
            }
            "cacertfile" => {
                if u.scheme() != "amqps" {
                    return Err(bad(format!(
                        "`cacertfile` needs an `amqps://` URL, got `{}://`",
                        u.scheme()
                    )));
                }
                tls.cert_chain = Some(read_ca_file(&v).map_err(bad)?);
            }
            other => {
                has_heartbeat |= other == "heartbeat";
                has_frame_max |= other == "frame_max";
                rest.push((k.into_owned(), v.into_owned()));
            }
        }
    }
    if !has_heartbeat {
        rest.push(("heartbeat".into(), "30".into()));
    }
    if !has_frame_max {
        // RabbitMQ's own default; see the module docs for why it is spelled out.
        rest.push(("frame_max".into(), DEFAULT_FRAME_MAX.to_string()));
    }
    if prefix.len() > 200 {
        return Err(bad("`prefix` is longer than 200 bytes".into()));
    }
    u.set_query(None);
    u.query_pairs_mut().extend_pairs(rest);
    Ok(Config {
        lapin_url: u.to_string(),
        tls,
        prefix,
        publish_timeout,
        prefetch,
        consumer_timeout,
    })
}

/// The PEM text of a `cacertfile`, checked to hold at least one certificate
/// (rustls would silently ignore a file without any).
fn read_ca_file(path: &str) -> Result<String, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("`cacertfile={path}`: cannot read it: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "`cacertfile={path}`: no PEM certificate in it (expected `-----BEGIN CERTIFICATE-----`)"
        ));
    }
    Ok(pem)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The delay level for `remaining` ms: one at most 100 ms / 5 % too long,
/// else the largest that is not too long.
fn pick_level(remaining: u64) -> u64 {
    let tolerance = (remaining / 20).max(100);
    if let Some(&l) = LEVELS_MS
        .iter()
        .find(|&&l| l >= remaining && l - remaining <= tolerance)
    {
        return l;
    }
    LEVELS_MS
        .iter()
        .rev()
        .find(|&&l| l <= remaining)
        .copied()
        .unwrap_or(LEVELS_MS[0])
}

fn header_u64(props: &BasicProperties, key: &str) -> Option<u64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

/// `run_at` of a message: the header, else the envelope field. (The body
/// is parsed only if it names the field: the poller parses it anyway, and a
/// second full parse per event showed in the profile.)
fn run_at_of(props: &BasicProperties, body: &[u8]) -> Option<u64> {
    if let Some(v) = header_u64(props, HEADER_RUN_AT) {
        return Some(v);
    }
    // Built once: building the searcher per event showed in the profile.
    static FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"run_at_ms\""));
    FIELD.find(body)?;
    #[derive(serde::Deserialize)]
    struct RunAt {
        run_at_ms: Option<u64>,
    }
    serde_json::from_slice::<RunAt>(body).ok()?.run_at_ms
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn i64_of(v: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The properties of an event message: persistent JSON, and no other
/// property nor header unless delayed (`x-action-event-run-at`). Everything
/// else is in the body. The envelope's name, queue, attempt and version
/// were headers once, and its id, name and time the `message_id`, `type`
/// and `timestamp` properties: RabbitMQ 3.10 took them all at a cost. A
/// raw lapin consumer drained 40,000 messages with the four headers in
/// 2.68-2.72 s, without them 1.18-1.29 s; 100,000 messages with the three
/// properties were published in 6.1-6.3 s (without: 4.5-4.8 s) and drained
/// in 4.6-4.9 s (without: 3.7-3.8 s), 3 runs each, taking turns.
fn envelope_properties(run_at: Option<u64>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    match run_at {
        Some(r) => {
            let mut headers = FieldTable::default();
            headers.insert(HEADER_RUN_AT.into(), i64_of(r));
            props.with_headers(headers)
        }
        None => props,
    }
}

/// A copy of a message's properties fit to publish again: without the
/// dead-lettering headers (RabbitMQ 3.x drops a message whose `x-death`
/// shows a cycle), with `run_at` set.
fn republish_properties(props: &BasicProperties, run_at: u64) -> BasicProperties {
    let copy = copy_properties(props);
    let mut headers = copy.headers().clone().unwrap_or_default();
    headers.insert(HEADER_RUN_AT.into(), i64_of(run_at));
    copy.with_headers(headers)
}

/// A copy of a message's properties for a renewal copy: persistent, without
/// the dead-lettering headers (see [`republish_properties`]).
fn copy_properties(props: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            if k.as_str() == "x-death" || k.as_str().starts_with("x-first-death") {
                continue;
            }
            headers.insert(k.clone(), v.clone());
        }
    }
    props.clone().with_headers(headers).with_delivery_mode(2)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Deletes a settled event's hold queue (when `delete`) and closes its channel.
async fn drop_hold(queue: String, ch: Channel, delete: bool) {
    if delete
        && let Err(e) = op(
            "delete the hold queue",
            ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
        )
        .await
    {
        let m = match e {
            TopoErr::Fatal(e) => e.to_string(),
            TopoErr::Transient(m) => m,
        };
        tracing::debug!(hold = %queue, error = %m, "hold queue not deleted; it expires by itself");
    }
    let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
}

/// Renews handed-out deliveries that run long, and reports those whose
/// channel was lost meanwhile (see *Long events* in the module docs).
async fn renewer(inner: Weak<Inner>) {
    let (every, renew_after, timeout) = match inner.upgrade() {
        Some(i) => (
            (i.consumer_timeout / 12).clamp(Duration::from_millis(50), Duration::from_secs(1)),
            i.consumer_timeout / 3,
            i.consumer_timeout,
        ),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let tags: Vec<Arc<Tag>> = {
            let mut held = lock(&inner.held);
            held.retain(|_, t| t.strong_count() > 0);
            held.values().filter_map(Weak::upgrade).collect()
        };
        for tag in tags {
            if tag.done.load(Ordering::SeqCst)
                || tag.lost.load(Ordering::SeqCst)
                || tag.renewing.load(Ordering::SeqCst)
            {
                continue;
            }
            let Ok(cur) = tag.cur.try_lock() else {
                continue;
            };
            let (usable, age) = (cur.acker.usable(), cur.since.elapsed());
            drop(cur);
            if !usable {
                if !tag.done.load(Ordering::SeqCst) && !tag.lost.swap(true, Ordering::SeqCst) {
                    let (id, name) = tag.ident();
                    tracing::warn!(
                        event = %id, queue = %tag.queue,
                        "event {} ({}) lost its RabbitMQ delivery while running ({:?} after it was taken, its delivery {age:?} old): \
                         the channel closed and the broker requeued it, so it will run again. If the broker's log says \
                         `delivery acknowledgement on channel N timed out`, its consumer_timeout is below the URL's \
                         `consumer_timeout` ({timeout:?}): set that option to the broker's value",
                        id, name, tag.taken.elapsed()
                    );
                }
                continue;
            }
            if age < renew_after {
                continue;
            }
            tag.renewing.store(true, Ordering::SeqCst);
            let inner = inner.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.renew(&tag).await {
                    let (id, name) = tag.ident();
                    tracing::warn!(
                        event = %id, queue = %tag.queue, error = %e,
                        "cannot renew the delivery of long event {id} ({name}) yet; trying again (RabbitMQ closes its channel once it is unacked for consumer_timeout)"
                    );
                }
                tag.renewing.store(false, Ordering::SeqCst);
            });
        }
    }
}

/// Rewords a broker error; `PRECONDITION_FAILED - inequivalent arg` names
/// the queue and the argument that differs.
fn describe_amqp_error(e: &lapin::Error) -> String {
    if let ErrorKind::ProtocolError(amqp) = e.kind() {
        let text = amqp.get_message().as_str();
        if let Some(rest) = text.split("inequivalent arg '").nth(1) {
            let arg = rest.split('\'').next().unwrap_or("?");
            let (kind, name) = ["queue", "exchange"]
                .iter()
                .find_map(|k| {
                    let marker = format!(" for {k} '");
                    let after = rest.split(marker.as_str()).nth(1)?;
                    Some((*k, after.split('\'').next().unwrap_or("?")))
                })
                .unwrap_or(("queue", "?"));
            let detail = text
                .split("in vhost '")
                .nth(1)
                .and_then(|s| s.split_once("': "))
                .map(|(_, d)| d)
                .unwrap_or("");
            return format!(
                "{kind} `{name}` already exists with different arguments: `{arg}` differs ({detail}); \
                 delete the {kind} or use another `prefix` in the URL"
            );
        }
        return format!("broker refused: {text}");
    }
    e.to_string()
}

fn is_fatal(e: &lapin::Error) -> bool {
    e.is_amqp_error()
        && !matches!(
            e.kind(),
            ErrorKind::ProtocolError(a) if a.get_id() == 320 || a.get_id() == 541
        )
}

/// Why [`probe`] failed.
struct ProbeError {
    /// The TLS handshake failed (the socket connected): retrying will not help.
    tls: bool,
    message: String,
}

/// Opens the transport once (TCP, plus the TLS handshake for `amqps://`)
/// and drops it. lapin retries a connect forever once recovery is on (a
/// refused socket, an untrusted certificate), in an I/O thread that outlives
/// any timeout put on the connect: probing first makes a wrong host or port,
/// or a certificate that is not trusted, fail at once with its own error.
async fn probe(lapin_url: &str, tls: &OwnedTLSConfig) -> Result<(), ProbeError> {
    let fail = |tls: bool, message: String| ProbeError { tls, message };
    use lapin::tcp::AMQPUriTcpExt;
    let uri: lapin::uri::AMQPUri = lapin_url.parse().map_err(|e| fail(false, e))?;
    let at = format!("{}:{}", uri.authority.host, uri.authority.port);
    let runtime = lapin::runtime::default_runtime().map_err(|e| fail(false, e.to_string()))?;
    let stream = uri.connect_with_config_async(tls.as_ref(), &runtime);
    match tokio::time::timeout(PROBE_TIMEOUT, stream).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let tls_failed = uri.scheme == lapin::uri::AMQPScheme::AMQPS
                && !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::AddrNotAvailable
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                );
            if !tls_failed {
                return Err(fail(false, format!("cannot connect to {at}: {e}")));
            }
            let hint = if e.to_string().contains("certificate") {
                "; to trust a private CA, add `cacertfile=/path/to/ca.pem` to the URL \
                 or set SSL_CERT_FILE"
            } else {
                ""
            };
            Err(fail(
                true,
                format!("TLS handshake with {at} failed: {e}{hint}"),
            ))
        }
        Err(_) => Err(fail(
            false,
            format!("cannot connect to {at}: no answer in {PROBE_TIMEOUT:?}"),
        )),
    }
}

async fn op<T>(
    what: &str,
    fut: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, TopoErr> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if is_fatal(&e) => Err(TopoErr::Fatal(Error::broker(
            "",
            format!("{what}: {}", describe_amqp_error(&e)),
        ))),
        Ok(Err(e)) => Err(TopoErr::Transient(format!("{what}: {e}"))),
        Err(_) => Err(TopoErr::Transient(format!(
            "{what}: no answer in {OP_TIMEOUT:?}"
        ))),
    }
}

impl AmqpBroker {
    /// Connects (the publish connection; the consume connection opens on
    /// the first `take`). Fails when the URL is malformed or the broker
    /// cannot be reached; the error shows the URL with its password redacted.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let broker = action_event::broker::amqp::AmqpBroker::open(
    ///     "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&publish_timeout=5s",
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<AmqpBroker, Error> {
        let cfg = parse_url(url)?;
        probe(&cfg.lapin_url, &cfg.tls)
            .await
            .map_err(|e| match e.tls {
                true => Error::broker(&redact_url(url), e.message),
                false => Error::broker_unreachable(&redact_url(url), e.message),
            })?;
        let inner = Arc::new(Inner {
            redacted: redact_url(url),
            lapin_url: cfg.lapin_url,
            tls: cfg.tls,
            prefix: cfg.prefix,
            publish_timeout: cfg.publish_timeout,
            prefetch: cfg.prefetch,
            consumer_timeout: cfg.consumer_timeout,
            closed: AtomicBool::new(false),
            held: Mutex::new(HashMap::new()),
            held_seq: AtomicU64::new(0),
            publisher: Mutex::new(None),
            pub_build: tokio::sync::Mutex::new(()),
            pub_epoch: Arc::new(AtomicU64::new(0)),
            declared: Mutex::new((0, HashSet::new())),
            all_declared: Mutex::new(BTreeSet::new()),
            consumer: Mutex::new(None),
            cons_build: tokio::sync::Mutex::new(()),
            cons_retry: Mutex::new((None, CONS_RETRY_MIN)),
            slots: Mutex::new(HashMap::new()),
            notify: Notify::new(),
            pump: tokio::sync::Mutex::new(()),
            pump_free: Notify::new(),
            conn_seq: AtomicU64::new(0),
        });
        let conn = inner.connect("publish").await.map_err(|e| {
            Error::broker_unreachable(&inner.redacted, format!("cannot connect: {e}"))
        })?;
        let confirm = inner
            .confirm_channel(&conn)
            .await
            .map_err(|e| inner.err(format!("cannot open a channel: {e}")))?;
        inner.watch(&conn, Some(inner.pub_epoch.clone()));
        *lock(&inner.publisher) = Some(PubConn {
            conn: Arc::new(conn),
            confirm,
        });
        tokio::spawn(reaper(Arc::downgrade(&inner)));
        tokio::spawn(renewer(Arc::downgrade(&inner)));
        Ok(AmqpBroker { inner })
    }

    /// The queue-name prefix in use.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let b = action_event::broker::amqp::AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// assert_eq!(b.prefix(), "action_event.");
    /// # Ok(()) }
    /// ```
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Stops taking: cancels the consumers, returns every buffered event that
    /// was not handed out (`nack` with `requeue: true`) and closes both
    /// connections. Events handed out and not yet acked go back to their
    /// queues when the connection closes. Dropping the broker does the same
    /// without waiting.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let b = action_event::broker::amqp::AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
    /// b.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let slots: Vec<Arc<Slot>> = lock(&self.inner.slots).values().cloned().collect();
        for slot in slots {
            let (sub, buf) = {
                let mut st = lock(&slot.st);
                (st.sub.take(), std::mem::take(&mut st.buf))
            };
            unsubscribe(sub, buf).await;
        }
        let cons = lock(&self.inner.consumer).take();
        if let Some(c) = cons {
            let _ = tokio::time::timeout(OP_TIMEOUT, c.conn.close(200, "OK".into())).await;
        }
        let publ = lock(&self.inner.publisher).take();
        if let Some(p) = publ {
            let _ = tokio::time::timeout(OP_TIMEOUT, p.confirm.wait_for_confirms()).await;
            let _ = tokio::time::timeout(OP_TIMEOUT, p.conn.close(200, "OK".into())).await;
        }
    }

    /// Deletes every queue and exchange this instance declared (work queues,
    /// the dead queue, the delay ladder) with their messages. For tests and
    /// tear-down; returns how many were deleted.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), action_event::Error> {
    /// let b = action_event::broker::amqp::AmqpBroker::open("amqp://guest:guest@127.0.0.1:5672/%2f?prefix=scratch.").await?;
    /// b.delete_topology().await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_topology(&self) -> Result<u64, Error> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.publish_timeout;
        let p = inner.pub_conn(deadline).await?;
        let names: Vec<(bool, String)> = lock(&inner.all_declared).iter().cloned().collect();
        let mut n = 0;
        for (is_exchange, name) in names {
            let ch = op("open channel", p.conn.create_channel())
                .await
                .map_err(|e| inner.topo_err(e))?;
            let res = if is_exchange {
                op(
                    "delete exchange",
                    ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
                )
                .await
                .map(|_| ())
            } else {
                op(
                    "delete queue",
                    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default()),
                )
                .await
                .map(|_| ())
            };
            let _ = ch.close(200, "OK".into()).await;
            res.map_err(|e| inner.topo_err(e))?;
            n += 1;
        }
        lock(&inner.all_declared).clear();
        lock(&inner.declared).1.clear();
        Ok(n)
    }
}

impl Drop for AmqpBroker {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Closing the consume connection makes the broker requeue every
        // buffered and unacked delivery; dropping the handles closes it.
        let slots: Vec<Arc<Slot>> = lock(&self.inner.slots).drain().map(|(_, s)| s).collect();
        let cons = lock(&self.inner.consumer).take();
        let publ = lock(&self.inner.publisher).take();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for slot in slots {
                    let (sub, buf) = {
                        let mut st = lock(&slot.st);
                        (st.sub.take(), std::mem::take(&mut st.buf))
                    };
                    unsubscribe(sub, buf).await;
                }
                if let Some(c) = cons {
                    let _ = tokio::time::timeout(OP_TIMEOUT, c.conn.close(200, "OK".into())).await;
                }
                if let Some(p) = publ {
                    let _ = tokio::time::timeout(OP_TIMEOUT, p.confirm.wait_for_confirms()).await;
                    let _ = tokio::time::timeout(OP_TIMEOUT, p.conn.close(200, "OK".into())).await;
                }
            });
        }
    }
}

/// Consumers whose channel the broker closed (e.g. for `consumer_timeout`),
/// kept instead of dropped. lapin 4.12.3 with recovery on leaves such a
/// consumer active; dropping its last handle then asks lapin to cancel it on
/// a channel that no longer exists, which lapin takes for a *connection*
/// error: it reconnects, and the broker requeues every unacked delivery of
/// the whole connection (measured: the consume connection then stalled).
/// A few hundred bytes each; only the oldest beyond [`DEAD_CONSUMERS_MAX`]
/// are dropped.
static DEAD_CONSUMERS: Mutex<VecDeque<Consumer>> = Mutex::new(VecDeque::new());
const DEAD_CONSUMERS_MAX: usize = 4096;

/// Keeps the consumer of a channel closed under us (see [`DEAD_CONSUMERS`]).
fn keep_dead_consumer(consumer: Consumer) {
    let mut dead = lock(&DEAD_CONSUMERS);
    dead.push_back(consumer);
    while dead.len() > DEAD_CONSUMERS_MAX {
        dead.pop_front();
    }
}

/// Cancels a consumer, returns its buffered deliveries and closes its channel.
async fn unsubscribe(sub: Option<Sub>, buf: VecDeque<LapinDelivery>) {
    let closed_under_us = sub.as_ref().is_some_and(|s| {
        let st = s.channel.status();
        !st.connected() && !st.reconnecting() && !st.initializing()
    });
    if let Some(sub) = &sub
        && sub.channel.status().connected()
    {
        let _ = tokio::time::timeout(
            OP_TIMEOUT,
            sub.channel
                .basic_cancel(sub.consumer.tag(), BasicCancelOptions::default()),
        )
        .await;
    }
    for d in buf {
        if d.acker.usable() {
            let _ = tokio::time::timeout(OP_TIMEOUT, d.acker.nack(REQUEUE)).await;
        }
    }
    if let Some(sub) = sub {
        // Return what arrived between cancel and now.
        let mut consumer = sub.consumer.clone();
        while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
            let _ = d.acker.nack(REQUEUE).await;
        }
        // Events handed out from this channel and still running keep it
        // open: closing it would make the broker requeue them, and they
        // would run twice (a poller whose slots are all busy with long
        // events reaches no `take` for `HOLD`, and the reaper returns its
        // buffered events). It is closed once they are settled or renewed.
        if sub.channel.status().connected() && sub.in_hand.load(Ordering::SeqCst) > 0 {
            tokio::spawn(async move {
                while sub.channel.status().connected() && sub.in_hand.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                close_sub(sub, closed_under_us).await;
            });
            return;
        }
        close_sub(sub, closed_under_us).await;
    }
}

/// Closes an unsubscribed consumer's channel: the broker requeues whatever
/// is still unacked on it.
async fn close_sub(sub: Sub, closed_under_us: bool) {
    let _ = tokio::time::timeout(OP_TIMEOUT, sub.channel.close(200, "OK".into())).await;
    if closed_under_us {
        keep_dead_consumer(sub.consumer);
    }
}

/// Returns buffered deliveries of levels no `take` reached for [`HOLD`].
async fn reaper(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let slots: Vec<Arc<Slot>> = lock(&inner.slots).values().cloned().collect();
        drop(inner);
        for slot in slots {
            let Ok(_g) = slot.sub_lock.try_lock() else {
                continue;
            };
            let taken = {
                let mut st = lock(&slot.st);
                if st.sub.is_some() && !st.buf.is_empty() && st.last_reached.elapsed() > HOLD {
                    st.clear = false;
                    Some((st.sub.take(), std::mem::take(&mut st.buf)))
                } else {
                    None
                }
            };
            if let Some((sub, buf)) = taken {
                tracing::debug!(queue = %slot.name, n = buf.len(), "returning buffered events of an unreached level");
                unsubscribe(sub, buf).await;
            }
        }
    }
}

impl Inner {
    fn err(&self, message: impl Into<crate::BoxError>) -> Error {
        Error::broker(&self.redacted, message)
    }

    fn topo_err(&self, e: TopoErr) -> Error {
        match e {
            TopoErr::Fatal(Error::Broker { source, .. }) => self.err(source),
            TopoErr::Fatal(e) => e,
            TopoErr::Transient(m) => self.err(m),
        }
    }

    fn full_name(&self, queue: &str) -> String {
        format!("{}{queue}", self.prefix)
    }

    fn dead_name(&self) -> String {
        format!("{}dead", self.prefix)
    }

    fn status_name(&self) -> String {
        format!("{}status", self.prefix)
    }

    fn delay_name(&self, level: u64) -> String {
        format!("{}delay.{level}", self.prefix)
    }

    async fn connect(&self, role: &str) -> Result<Connection, String> {
        self.connect_with(role, true).await
    }

    /// A connection; with `recover`, lapin's automatic recovery is on.
    async fn connect_with(&self, role: &str, recover: bool) -> Result<Connection, String> {
        let mut props = ConnectionProperties::default().with_connection_name(
            format!(
                "action_event {role} {} pid {}",
                self.prefix,
                std::process::id()
            )
            .into(),
        );
        if recover {
            props = props.enable_auto_recover().configure_backoff(|b| {
                b.without_max_times()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(5))
            });
        }
        // A TLS failure would make lapin retry forever (see `probe`); a
        // socket that does not connect yet is left to lapin's retries, as for
        // `amqp://`.
        if recover
            && self.lapin_url.starts_with("amqps:")
            && let Err(e) = probe(&self.lapin_url, &self.tls).await
            && e.tls
        {
            return Err(e.message);
        }
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let connect =
            Connection::connect_with_config(&self.lapin_url, props, self.tls.clone(), runtime);
        match tokio::time::timeout(OP_TIMEOUT, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(describe_amqp_error(&e)),
            Err(_) => Err(format!("no answer in {OP_TIMEOUT:?}")),
        }
    }

    async fn confirm_channel(&self, conn: &Connection) -> Result<Channel, String> {
        let ch = tokio::time::timeout(OP_TIMEOUT, conn.create_channel())
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            OP_TIMEOUT,
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(ch)
    }

    /// The publish connection and its confirm channel, rebuilt when needed;
    /// waits for a reconnect until `deadline`.
    async fn pub_conn(&self, deadline: Instant) -> Result<PubConn, Error> {
        let mut last = String::from("not connected");
        let mut pause = Duration::from_millis(50);
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Err(self.err("the broker was closed"));
            }
            let cur = lock(&self.publisher).clone();
            let mut rebuild = true;
            if let Some(p) = &cur {
                let cs = p.conn.status();
                if cs.connected() && p.confirm.status().connected() {
                    return Ok(p.clone());
                }
                if cs.reconnecting() || cs.connecting() || p.confirm.status().reconnecting() {
                    rebuild = false;
                    last = "reconnecting".into();
                }
            }
            if rebuild {
                let _g = self.pub_build.lock().await;
                let again = lock(&self.publisher).clone();
                let healthy =
                    |p: &PubConn| p.conn.status().connected() && p.confirm.status().connected();
                if again.as_ref().is_some_and(healthy) {
                    continue;
                }
                if again
                    .as_ref()
                    .is_some_and(|p| p.conn.status().reconnecting() || p.conn.status().connecting())
                {
                    last = "reconnecting".into();
                } else {
                    // Keep a connection that is still up (only its channel broke).
                    let keep = again
                        .as_ref()
                        .filter(|a| a.conn.status().connected())
                        .map(|a| a.conn.clone());
                    let fresh = keep.is_none();
                    let conn = match keep {
                        Some(c) => Ok(c),
                        None => self.connect("publish").await.map(Arc::new),
                    };
                    match conn {
                        Ok(conn) => match self.confirm_channel(&conn).await {
                            Ok(confirm) => {
                                if fresh {
                                    self.watch(&conn, Some(self.pub_epoch.clone()));
                                }
                                self.pub_epoch.fetch_add(1, Ordering::SeqCst);
                                tracing::info!(url = %self.redacted, "publish connection (re)built");
                                *lock(&self.publisher) = Some(PubConn { conn, confirm });
                                continue;
                            }
                            Err(e) => last = e,
                        },
                        Err(e) => last = e,
                    }
                }
            }
            if Instant::now() + pause >= deadline {
                return Err(self.err(format!(
                    "broker unavailable for {:?} ({last}); gave up (raise `publish_timeout` in the URL to wait longer)",
                    self.publish_timeout
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Logs `conn`'s errors and blocks; bumps `epoch` whenever `conn`
    /// reconnects (lapin recovery).
    fn watch(&self, conn: &Connection, epoch: Option<Arc<AtomicU64>>) {
        let mut events = conn.events_listener();
        tokio::spawn(async move {
            // The first `Connected` may be the initial connection's (it is
            // sent just after `connect` resolves): only one that follows an
            // error is a reconnect.
            let mut after_error = false;
            while let Some(ev) = events.next().await {
                match ev {
                    lapin::Event::Connected => {
                        if after_error && let Some(epoch) = &epoch {
                            epoch.fetch_add(1, Ordering::SeqCst);
                        }
                        after_error = false;
                    }
                    lapin::Event::Error(e) => {
                        after_error = true;
                        tracing::warn!(error = %e, "RabbitMQ connection error")
                    }
                    lapin::Event::ConnectionBlocked(r) => {
                        tracing::warn!(reason = %r, "RabbitMQ blocked publishing")
                    }
                    _ => {}
                }
            }
        });
    }

    /// Declares what a publish needs, once per (re)connect.
    async fn ensure(&self, p: &PubConn, queue: &str, level: Option<u64>) -> Result<(), TopoErr> {
        let epoch = self.pub_epoch.load(Ordering::SeqCst);
        let mut todo: Vec<(String, Option<u64>)> = Vec::new();
        {
            let mut d = lock(&self.declared);
            if d.0 != epoch {
                *d = (epoch, HashSet::new());
            }
            if !d.1.contains(queue) {
                todo.push((queue.to_string(), None));
            }
            if let Some(l) = level {
                let n = self.delay_name(l);
                if !d.1.contains(&n) {
                    todo.push((n, Some(l)));
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        // A declaration that fails closes its channel: never the confirm channel.
        let ch = op("open channel", p.conn.create_channel()).await?;
        let res = async {
            for (name, level) in &todo {
                self.declare(&ch, name, *level).await?;
            }
            Ok(())
        }
        .await;
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        res?;
        let mut d = lock(&self.declared);
        if d.0 == epoch {
            for (name, _) in todo {
                d.1.insert(name);
            }
        }
        Ok(())
    }

    /// Declares one queue (`level` None) or one delay level.
    async fn declare(&self, ch: &Channel, name: &str, level: Option<u64>) -> Result<u32, TopoErr> {
        let mut args = FieldTable::default();
        if let Some(l) = level {
            args.insert("x-message-ttl".into(), i64_of(l));
            args.insert("x-dead-letter-exchange".into(), long_str(""));
            op(
                "declare exchange",
                ch.exchange_declare(
                    name.into(),
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            lock(&self.all_declared).insert((true, name.to_string()));
        }
        let q = op(
            "declare queue",
            ch.queue_declare(name.into(), QueueDeclareOptions::durable(), args),
        )
        .await?;
        lock(&self.all_declared).insert((false, name.to_string()));
        if level.is_some() {
            op(
                "bind queue",
                ch.queue_bind(
                    name.into(),
                    name.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        Ok(q.message_count())
    }

    /// Publishes with confirm to queue `routing_key` (through delay level
    /// `level` if given), retrying through reconnects until `deadline`.
    async fn publish_raw(
        &self,
        routing_key: &str,
        level: Option<u64>,
        body: &[u8],
        props: BasicProperties,
        deadline: Instant,
    ) -> Result<(), Error> {
        let exchange = level.map(|l| self.delay_name(l)).unwrap_or_default();
        let exchange = exchange.as_str();
        let mut pause = Duration::from_millis(20);
        loop {
            let p = self.pub_conn(deadline).await?;
            let res = async {
                self.ensure(&p, routing_key, level).await?;
                let confirm = p
                    .confirm
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        body,
                        props.clone(),
                    )
                    .await
                    .map_err(|e| TopoErr::Transient(e.to_string()))?;
                confirm.await.map_err(|e| TopoErr::Transient(e.to_string()))
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(remaining, res).await {
                Err(_) => "no confirm".to_string(),
                Ok(Err(TopoErr::Fatal(e))) => return Err(self.topo_err(TopoErr::Fatal(e))),
                Ok(Err(TopoErr::Transient(m))) => m,
                Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
                Ok(Ok(Confirmation::Ack(Some(ret)))) => {
                    return Err(self.err(format!(
                        "message to `{routing_key}` was returned as unroutable: {} {}",
                        ret.reply_code, ret.reply_text
                    )));
                }
                Ok(Ok(Confirmation::Nack(_))) => "the broker nacked the message".to_string(),
                Ok(Ok(Confirmation::NotRequested)) => {
                    return Err(self.err("publisher confirms are not on"));
                }
            };
            if Instant::now() + pause >= deadline {
                return Err(self.err(format!(
                    "publish to `{routing_key}` not confirmed within {:?} ({last})",
                    self.publish_timeout
                )));
            }
            tracing::debug!(error = %last, "publish not confirmed; publishing again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Sends a message to its work queue, through the delay ladder when
    /// `run_at` is in the future.
    async fn route(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
        run_at: Option<u64>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let target = self.full_name(queue);
        let remaining = run_at.map(|r| r.saturating_sub(now_ms())).unwrap_or(0);
        let level = (remaining > 0).then(|| pick_level(remaining));
        self.publish_raw(&target, level, body, props, deadline)
            .await
    }

    async fn publish_envelope(&self, env: &Envelope) -> Result<(), Error> {
        let deadline = Instant::now() + self.publish_timeout;
        let run_at = env.run_at_ms.filter(|r| *r > now_ms());
        let props = envelope_properties(env.run_at_ms);
        self.route(&env.queue, &env.to_bytes(), props, run_at, deadline)
            .await
    }

    // ---- consume side ----

    fn slot(&self, queue: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(queue) {
            return s.clone();
        }
        slots
            .entry(queue.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    name: queue.to_string(),
                    full: self.full_name(queue),
                    st: Mutex::new(SlotState {
                        sub: None,
                        buf: VecDeque::new(),
                        clear: false,
                        arrivals: 0,
                        last_reached: std::time::Instant::now(),
                        last_settle: None,
                        busy_until: None,
                    }),
                    check: tokio::sync::Mutex::new(()),
                    sub_lock: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// The consume connection if it is up; `None` while there is none.
    ///
    /// It has no lapin recovery: once it is not connected (closed by the
    /// broker, the socket lost, a missed heartbeat), its whole generation is
    /// dropped (every consumer made on it and the events they buffered; the
    /// broker requeues them) and a new connection is made, at most one
    /// attempt per pause (200 ms doubling to 5 s, ±25 %). Never blocks on
    /// another task's attempt: returns `None` instead.
    async fn cons_conn(&self) -> Option<ConsConn> {
        if let Some(c) = lock(&self.consumer).as_ref()
            && c.conn.status().connected()
        {
            return Some(c.clone());
        }
        let Ok(_g) = self.cons_build.try_lock() else {
            return None;
        };
        let old = {
            let mut cur = lock(&self.consumer);
            if let Some(c) = cur.as_ref()
                && c.conn.status().connected()
            {
                return Some(c.clone());
            }
            cur.take()
        };
        if let Some(old) = old {
            tracing::warn!(
                url = %self.redacted,
                status = ?old.conn.status(),
                "consume connection lost: reconnecting; events taken on it and not acked go back to their queues"
            );
            self.drop_generation(old.id);
            *lock(&self.cons_retry) = (None, CONS_RETRY_MIN);
        }
        if lock(&self.cons_retry)
            .0
            .is_some_and(|next| Instant::now() < next)
        {
            return None;
        }
        match self.connect_with("consume", false).await {
            Ok(conn) => {
                *lock(&self.cons_retry) = (None, CONS_RETRY_MIN);
                self.watch(&conn, None);
                let id = self.conn_seq.fetch_add(1, Ordering::SeqCst) + 1;
                let c = ConsConn {
                    conn: Arc::new(conn),
                    id,
                };
                *lock(&self.consumer) = Some(c.clone());
                tracing::info!(url = %self.redacted, "consume connection (re)built");
                Some(c)
            }
            Err(e) => {
                let mut retry = lock(&self.cons_retry);
                let pause = retry.1.mul_f64(rand::random_range(0.75..=1.25));
                *retry = (
                    Some(Instant::now() + pause),
                    (retry.1 * 2).min(CONS_RETRY_MAX),
                );
                tracing::warn!(url = %self.redacted, error = %e, "cannot connect to consume; retrying in {pause:?}");
                None
            }
        }
    }

    /// Forgets every consumer of generation `id` and the events it buffered.
    /// Their connection is gone: the broker has requeued those events, and
    /// nothing can be sent on their channels any more.
    fn drop_generation(&self, id: u64) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        for slot in slots {
            let mut st = lock(&slot.st);
            if st.sub.as_ref().is_some_and(|s| s.conn_id == id) {
                st.sub = None;
                st.buf.clear();
                st.clear = false;
            }
        }
        // A task waiting on the dropped consumers looks again.
        self.notify.notify_waiters();
    }

    /// Makes sure `slot` has a live consumer on the current connection.
    async fn ensure_sub(&self, slot: &Arc<Slot>, cons: &ConsConn) -> Result<bool, Error> {
        let ok = |st: &SlotState| {
            st.sub
                .as_ref()
                .is_some_and(|s| s.conn_id == cons.id && s.channel.status().connected())
        };
        if ok(&lock(&slot.st)) {
            return Ok(true);
        }
        let _g = slot.sub_lock.lock().await;
        let (old, buf) = {
            let mut st = lock(&slot.st);
            if ok(&st) {
                return Ok(true);
            }
            st.clear = false;
            (st.sub.take(), std::mem::take(&mut st.buf))
        };
        if old.is_some() || !buf.is_empty() {
            tokio::spawn(unsubscribe(old, buf));
        }
        let res = async {
            let ch = op("open channel", cons.conn.create_channel()).await?;
            op(
                "declare queue",
                ch.queue_declare(
                    slot.full.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                ),
            )
            .await?;
            lock(&self.all_declared).insert((false, slot.full.clone()));
            op(
                "qos",
                ch.basic_qos(self.prefetch, BasicQosOptions { global: false }),
            )
            .await?;
            let tag = format!("action_event.{}", uuid::Uuid::now_v7());
            let consumer = op(
                "consume",
                ch.basic_consume(
                    slot.full.as_str().into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok::<_, TopoErr>(Sub {
                channel: ch,
                consumer,
                conn_id: cons.id,
                unacked: Arc::new(AtomicUsize::new(0)),
                in_hand: Arc::new(AtomicUsize::new(0)),
            })
        }
        .await;
        match res {
            Ok(sub) => {
                let mut st = lock(&slot.st);
                st.sub = Some(sub);
                st.clear = false;
                Ok(true)
            }
            Err(TopoErr::Fatal(e)) => Err(self.topo_err(TopoErr::Fatal(e))),
            Err(TopoErr::Transient(m)) => {
                tracing::debug!(queue = %slot.name, error = %m, "cannot subscribe yet");
                Ok(false)
            }
        }
    }

    /// Moves every delivery already received by the consumer into the buffer.
    fn drain(st: &mut SlotState) {
        loop {
            let Some(sub) = st.sub.as_mut() else { return };
            match sub.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => st.arrived(d),
                Some(Some(Err(e))) => {
                    // lapin errs a consumer when its channel or connection
                    // fails, then ends it: it is done either way.
                    tracing::debug!(error = %e, "consumer error; subscribing again");
                    st.sub = None;
                    st.clear = false;
                    return;
                }
                Some(None) => {
                    // Cancelled (queue deleted, channel closed): resubscribe later.
                    st.sub = None;
                    st.clear = false;
                    return;
                }
                None => return,
            }
        }
    }

    fn pop(st: &mut SlotState) -> Option<LapinDelivery> {
        while let Some(d) = st.buf.pop_front() {
            if d.acker.usable() {
                return Some(d);
            }
        }
        None
    }

    fn is_full(&self, st: &SlotState) -> bool {
        st.sub
            .as_ref()
            .is_some_and(|s| s.unacked.load(Ordering::SeqCst) >= usize::from(self.prefetch))
    }

    /// Proves that `slot` has nothing ready in the broker (see module docs).
    async fn check(&self, slot: &Arc<Slot>) -> Check {
        let _g = slot.check.lock().await;
        let (sub, arrivals) = {
            let mut st = lock(&slot.st);
            Self::drain(&mut st);
            if !st.buf.is_empty() {
                return Check::Retry;
            }
            if st.clear {
                return Check::Clear;
            }
            match st.sub.clone() {
                Some(s) => (s, st.arrivals),
                None => return Check::Unknown,
            }
        };
        for _ in 0..3 {
            match tokio::time::timeout(
                OP_TIMEOUT,
                sub.channel
                    .basic_get(slot.full.as_str().into(), BasicGetOptions { no_ack: false }),
            )
            .await
            {
                Ok(Ok(Some(m))) => {
                    lock(&slot.st).busy_until = Some(std::time::Instant::now() + RECHECK);
                    let origin = Origin {
                        unacked: None,
                        in_hand: sub.in_hand.clone(),
                    };
                    return Check::Got(Box::new(m.delivery), origin);
                }
                Ok(Ok(None)) => {}
                _ => return Check::Unknown,
            }
            // Barrier: deliveries pushed before this reply are in the stream now.
            let q = match tokio::time::timeout(
                OP_TIMEOUT,
                sub.channel.queue_declare(
                    slot.full.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            {
                Ok(Ok(q)) => q,
                _ => return Check::Unknown,
            };
            let settle = {
                let mut st = lock(&slot.st);
                Self::drain(&mut st);
                if !st.buf.is_empty() {
                    return Check::Retry;
                }
                if q.message_count() > 0 {
                    continue;
                }
                // Other pollers share this queue: give the events they
                // already hold a moment to start before we go lower (at
                // most once per second per queue, so it costs nothing in
                // steady state).
                let due = st.last_settle.is_none_or(|t| t.elapsed() > SETTLE_EVERY);
                if q.consumer_count() > 1 && due {
                    st.last_settle = Some(std::time::Instant::now());
                    true
                } else {
                    if !self.is_full(&st) && st.arrivals == arrivals {
                        st.clear = true;
                    }
                    return Check::Clear;
                }
            };
            if settle {
                tokio::time::sleep(SETTLE).await;
                let mut st = lock(&slot.st);
                Self::drain(&mut st);
                if !st.buf.is_empty() {
                    return Check::Retry;
                }
                if !self.is_full(&st) && st.arrivals == arrivals {
                    st.clear = true;
                }
                return Check::Clear;
            }
        }
        Check::Unknown
    }

    /// One pass over the levels, highest first.
    async fn select(&self, slots: &[Arc<Slot>], cons: &ConsConn) -> Result<Pick, Error> {
        let mut poll_soon = false;
        for (i, slot) in slots.iter().enumerate() {
            if !self.ensure_sub(slot, cons).await? {
                return Ok(Pick::Wait { poll_soon: true });
            }
            let (popped, more, full) = {
                let mut st = lock(&slot.st);
                Self::drain(&mut st);
                st.last_reached = std::time::Instant::now();
                let d = Self::pop(&mut st).map(|d| {
                    let origin = st.sub.as_ref().map(|s| Origin {
                        unacked: Some(s.unacked.clone()),
                        in_hand: s.in_hand.clone(),
                    });
                    (d, origin)
                });
                (d, !st.buf.is_empty(), self.is_full(&st))
            };
            if let Some((d, origin)) = popped {
                if more {
                    // Wakes the takers that wait now (every `take` registers
                    // before it looks); unlike `notify_one` it leaves no
                    // permit behind for a later wait to trip over.
                    self.notify.notify_waiters();
                }
                return Ok(Pick::Got(slot.clone(), Box::new(d), origin));
            }
            poll_soon |= full;
            let last = i + 1 == slots.len();
            if last && !full {
                break;
            }
            // A check is a round trip through this level's queue, which is
            // busy delivering when it has a backlog (~0.8 ms measured), and
            // it only serves to hand out an event of a lower level, or to
            // reach a lower level not subscribed yet. So it is skipped while
            // no lower level has anything buffered and either every lower
            // level is subscribed or this level was found not clear within
            // `RECHECK`: the take waits for an arrival (or `poll_soon`)
            // instead. Checking on every empty buffer cost a drain of a
            // `medium` backlog over half its time (a check per ~25 events).
            if !full {
                let (mut buffered, mut unreached) = (false, false);
                for lower in &slots[i + 1..] {
                    let mut st = lock(&lower.st);
                    Self::drain(&mut st);
                    buffered |= !st.buf.is_empty();
                    unreached |= st.sub.is_none();
                }
                if !buffered && !unreached {
                    break;
                }
                let busy = lock(&slot.st)
                    .busy_until
                    .is_some_and(|t| std::time::Instant::now() < t);
                if !buffered && busy {
                    poll_soon = true;
                    break;
                }
            }
            match self.check(slot).await {
                Check::Got(d, origin) => {
                    return Ok(Pick::Got(slot.clone(), d, Some(origin)));
                }
                Check::Retry => return Ok(Pick::Retry),
                Check::Clear => {}
                Check::Unknown => return Ok(Pick::Wait { poll_soon: true }),
            }
        }
        Ok(Pick::Wait { poll_soon })
    }

    /// Waits for a delivery on any of `slots`, a notification, or `until`.
    async fn wait_for_work(
        &self,
        slots: &[Arc<Slot>],
        notified: Pin<&mut tokio::sync::futures::Notified<'_>>,
        until: Instant,
    ) {
        // Created before the pump is tried, so a release after a failed
        // try is never missed.
        let pump_free = self.pump_free.notified();
        let Ok(pump) = self.pump.try_lock() else {
            tokio::select! {
                _ = notified => {}
                _ = pump_free => {}
                _ = tokio::time::sleep_until(until) => {}
            }
            return;
        };
        let mut watched: Vec<(Arc<Slot>, Consumer, ShortString)> = slots
            .iter()
            .filter_map(|s| {
                let st = lock(&s.st);
                st.sub
                    .as_ref()
                    .map(|sub| (s.clone(), sub.consumer.clone(), sub.consumer.tag()))
            })
            .collect();
        if watched.is_empty() {
            let _ = tokio::time::timeout_at(until, notified).await;
        } else {
            let arrival = poll_fn(|cx| {
                for (slot, consumer, tag) in watched.iter_mut() {
                    let mut st = lock(&slot.st);
                    match consumer.poll_next_unpin(cx) {
                        Poll::Ready(Some(Ok(d))) => {
                            match st.sub.as_ref().filter(|s| s.consumer.tag() == *tag) {
                                Some(_) => st.arrived(d),
                                None => {
                                    tokio::spawn(async move {
                                        let _ = d.acker.nack(REQUEUE).await;
                                    });
                                }
                            }
                            return Poll::Ready(());
                        }
                        Poll::Ready(end) => {
                            // An error or the end: the consumer is done
                            // (see `drain`); the next `take` subscribes again.
                            if let Some(Err(e)) = end {
                                tracing::debug!(error = %e, "consumer error; subscribing again");
                            }
                            if st.sub.as_ref().is_some_and(|s| s.consumer.tag() == *tag) {
                                st.sub = None;
                                st.clear = false;
                            }
                            return Poll::Ready(());
                        }
                        Poll::Pending => {}
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                _ = arrival => {}
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        drop(pump);
        // Tasks that wait without the pump look again; one of them takes
        // it over. `notify_waiters` keeps no permit: the `notify_one` that
        // was here left one behind whenever no other task waited (a dropped
        // `Notified` passes an unreceived `notify_one` on), so the next wait
        // returned at once and left it again: waits that never waited.
        self.pump_free.notify_waiters();
    }

    /// Turns a lapin delivery into ours, or sends it through the delay
    /// ladder again when it came back before its time.
    async fn hand_out(
        &self,
        slot: &Slot,
        d: LapinDelivery,
        origin: Option<Origin>,
    ) -> Option<Delivery> {
        let LapinDelivery {
            data,
            acker,
            redelivered,
            properties,
            ..
        } = d;
        let (unacked, in_hand) = match origin {
            Some(o) => (o.unacked, Some(o.in_hand)),
            None => (None, None),
        };
        let now = std::time::Instant::now();
        let tag = Tag {
            seq: 0,
            cur: tokio::sync::Mutex::new(Current {
                acker,
                hold: None,
                since: now,
                renewals: 0,
            }),
            counted: AtomicBool::new(true),
            held_open: AtomicBool::new(true),
            unacked,
            in_hand: in_hand.inspect(|n| {
                n.fetch_add(1, Ordering::SeqCst);
            }),
            done: AtomicBool::new(false),
            renewing: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            queue: slot.name.clone(),
            full_queue: slot.full.clone(),
            properties,
            body: data.clone(),
            taken: now,
        };
        if let Some(run_at) = run_at_of(&tag.properties, &data) {
            let now = now_ms();
            if run_at > now + SHORT_WAIT_MS {
                let props = republish_properties(&tag.properties, run_at);
                let deadline = Instant::now() + self.publish_timeout;
                match self
                    .route(&slot.name, &data, props, Some(run_at), deadline)
                    .await
                {
                    Ok(()) => self.settle_ack(&tag).await,
                    Err(e) => {
                        tracing::warn!(queue = %slot.name, error = %e, "cannot delay an early event; returning it");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        self.settle_nack(&tag).await;
                    }
                }
                return None;
            } else if run_at > now {
                tokio::time::sleep(Duration::from_millis(run_at - now)).await;
            }
        }
        let tag = self.register(tag);
        Some(Delivery {
            queue: slot.name.clone(),
            body: data,
            redelivered,
            tag: Box::new(tag),
        })
    }

    async fn settle_ack(&self, tag: &Tag) {
        self.finish(tag);
        let mut cur = tag.cur.lock().await;
        let sent = match tokio::time::timeout(OP_TIMEOUT, cur.acker.ack(BasicAckOptions::default()))
            .await
        {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err("already settled, or the channel was lost".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not sent in {OP_TIMEOUT:?}")),
        };
        tag.release_channel();
        if let Err(e) = sent {
            tracing::warn!(
                queue = %tag.full_queue, event = %tag.event_id(), error = %e,
                "ack failed: the broker will deliver the event again"
            );
        }
        // The event is settled: a copy left in its hold queue (its channel
        // was lost) must not come back, so the queue goes either way.
        if let Some((queue, ch)) = cur.hold.take() {
            drop_hold(queue, ch, true).await;
        }
    }

    async fn settle_nack(&self, tag: &Tag) {
        self.finish(tag);
        let mut cur = tag.cur.lock().await;
        // A renewed event: rejecting the copy dead-letters it to its work
        // queue at once (the hold queue's dead-letter routing key).
        let requeue = cur.hold.is_none();
        let res = tokio::time::timeout(
            OP_TIMEOUT,
            cur.acker.nack(BasicNackOptions {
                multiple: false,
                requeue,
            }),
        )
        .await;
        let sent = matches!(res, Ok(Ok(true)));
        tag.release_channel();
        if !sent {
            tracing::warn!(queue = %tag.full_queue, event = %tag.event_id(), "release not sent: the broker requeues the event when the channel closes");
        }
        if let Some((queue, ch)) = cur.hold.take() {
            // Not sent: the broker requeued the copy into its hold queue,
            // which dead-letters it within `HOLD_TTL`: keep the queue.
            drop_hold(queue, ch, sent).await;
        }
    }

    /// Marks a delivery settled: it leaves the renewer and the prefetch
    /// count. (It leaves its channel's in-hand count once its ack or nack is
    /// sent: until then the channel must stay open.)
    fn finish(&self, tag: &Tag) {
        tag.done.store(true, Ordering::SeqCst);
        tag.uncount();
        if tag.seq != 0 {
            lock(&self.held).remove(&tag.seq);
        }
    }

    /// Registers a handed-out delivery with the renewer.
    fn register(&self, mut tag: Tag) -> Arc<Tag> {
        tag.seq = self.held_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let tag = Arc::new(tag);
        lock(&self.held).insert(tag.seq, Arc::downgrade(&tag));
        tag
    }

    /// Moves a long-running event to a fresh delivery (see *Long events* in
    /// the module docs): a copy in its hold queue, fetched unacked on the
    /// event's own channel, then the previous delivery is acked.
    async fn renew(&self, tag: &Tag) -> Result<(), String> {
        let mut cur = tag.cur.lock().await;
        if tag.done.load(Ordering::SeqCst) || !cur.acker.usable() {
            return Ok(());
        }
        let cons = self
            .cons_conn()
            .await
            .ok_or_else(|| "the consume connection is down".to_string())?;
        let text = |e: TopoErr| match e {
            TopoErr::Fatal(e) => e.to_string(),
            TopoErr::Transient(m) => m,
        };
        let (queue, ch) = match &cur.hold {
            Some((q, c)) => (q.clone(), c.clone()),
            None => {
                let ch = op("open a hold channel", cons.conn.create_channel())
                    .await
                    .map_err(text)?;
                (self.hold_name(tag), ch)
            }
        };
        let fetched = async {
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), i64_of(ms(HOLD_TTL)));
            args.insert("x-dead-letter-exchange".into(), long_str(""));
            args.insert(
                "x-dead-letter-routing-key".into(),
                long_str(&tag.full_queue),
            );
            args.insert(
                "x-expires".into(),
                i64_of(ms(self.consumer_timeout * 2 + BROKER_TICK)),
            );
            op(
                "declare the hold queue",
                ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args),
            )
            .await
            .map_err(text)?;
            self.publish_copy(&queue, &tag.body, copy_properties(&tag.properties))
                .await?;
            match op(
                "fetch the copy",
                ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }),
            )
            .await
            .map_err(text)?
            {
                Some(m) => Ok(m.delivery.acker),
                None => Err(format!(
                    "the copy left `{queue}` before it could be fetched: it goes back to `{}` and the event runs again",
                    tag.full_queue
                )),
            }
        }
        .await;
        let acker = match fetched {
            Ok(a) => a,
            Err(e) => {
                if cur.hold.is_none() {
                    let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
                }
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut cur.acker, acker);
        let age = cur.since.elapsed();
        cur.hold = Some((queue.clone(), ch));
        cur.since = std::time::Instant::now();
        cur.renewals += 1;
        let acked = matches!(
            tokio::time::timeout(OP_TIMEOUT, old.ack(BasicAckOptions::default())).await,
            Ok(Ok(true))
        );
        tag.uncount();
        tag.release_channel();
        match acked {
            true => tracing::debug!(
                event = %tag.event_id(), queue = %tag.queue, hold = %queue, renewals = cur.renewals,
                "renewed a long event's delivery after {age:?} (consumer_timeout {:?})", self.consumer_timeout
            ),
            false => {
                let (id, name) = tag.ident();
                tracing::warn!(
                    event = %id, queue = %tag.queue,
                    "renewed event {id} ({name}), but its previous delivery could not be acked: the event will run again"
                )
            }
        }
        Ok(())
    }

    /// `<prefix>hold.<event id>.<nonce>`, within RabbitMQ's 255 bytes.
    fn hold_name(&self, tag: &Tag) -> String {
        let id: String = tag
            .event_id()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(40)
            .collect();
        // The last hex digits of a v7 UUID are random.
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        format!("{}hold.{id}.{}", self.prefix, &nonce[24..])
    }

    /// Publishes a renewal copy straight to its hold queue, confirmed (one
    /// attempt: the renewer tries again on its next tick).
    async fn publish_copy(
        &self,
        queue: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), String> {
        let deadline = Instant::now() + OP_TIMEOUT.min(self.publish_timeout);
        let p = self.pub_conn(deadline).await.map_err(|e| e.to_string())?;
        let confirmed = tokio::time::timeout(OP_TIMEOUT, async {
            p.confirm
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    props,
                )
                .await?
                .await
        })
        .await;
        match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                Err(format!("the copy to `{queue}` was returned as unroutable"))
            }
            Ok(Ok(_)) => Err(format!("the broker did not confirm the copy to `{queue}`")),
            Ok(Err(e)) => Err(format!("publish the copy to `{queue}`: {e}")),
            Err(_) => Err(format!(
                "publish the copy to `{queue}`: no confirm in {OP_TIMEOUT:?}"
            )),
        }
    }

    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error> {
        let deadline = Instant::now() + wait;
        let slots: Vec<Arc<Slot>> = queues.iter().map(|q| self.slot(q)).collect();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut poll_soon = true;
            if let Some(cons) = self.cons_conn().await
                && !slots.is_empty()
            {
                match self.select(&slots, &cons).await? {
                    Pick::Got(slot, d, origin) => {
                        if let Some(del) = self.hand_out(&slot, *d, origin).await {
                            return Ok(Some(del));
                        }
                        continue;
                    }
                    Pick::Retry => continue,
                    Pick::Wait { poll_soon: p } => poll_soon = p,
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let until = if poll_soon {
                deadline.min(now + Duration::from_millis(50))
            } else {
                deadline
            };
            self.wait_for_work(&slots, notified, until).await;
        }
    }

    fn tag<'a>(&self, delivery: &'a Delivery) -> Result<&'a Tag, Error> {
        delivery
            .tag
            .downcast_ref::<Arc<Tag>>()
            .map(|t| &**t)
            .ok_or_else(|| self.err("this delivery was not taken from this broker"))
    }

    // ---- dead letters ----

    /// Walks the dead queue: every message is fetched with `basic.get`
    /// (unacked) on one channel, `decide` says what to do with it, and the
    /// ones kept are requeued at the end (closing the channel would too).
    async fn dead_walk<F>(&self, mut decide: F) -> Result<Vec<DeadEvent>, Error>
    where
        F: FnMut(&DeadEvent) -> DeadAction,
    {
        let deadline = Instant::now() + self.publish_timeout;
        let p = self.pub_conn(deadline).await?;
        let dead = self.dead_name();
        self.ensure(&p, &dead, None)
            .await
            .map_err(|e| self.topo_err(e))?;
        let ch = op("open channel", p.conn.create_channel())
            .await
            .map_err(|e| self.topo_err(e))?;
        let mut out = Vec::new();
        let mut kept = false;
        let res = async {
            loop {
                let Some(m) = op(
                    "get dead event",
                    ch.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false }),
                )
                .await
                .map_err(|e| self.topo_err(e))?
                else {
                    break;
                };
                let d = m.delivery;
                let Ok(ev) = serde_json::from_slice::<DeadEvent>(&d.data) else {
                    tracing::warn!(queue = %dead, "a message in the dead queue is not a dead event; left alone");
                    kept = true;
                    continue;
                };
                match decide(&ev) {
                    DeadAction::Keep => {
                        kept = true;
                        out.push(ev);
                    }
                    DeadAction::Purge => {
                        op("ack dead event", d.acker.ack(BasicAckOptions::default()))
                            .await
                            .map_err(|e| self.topo_err(e))?;
                        out.push(ev);
                    }
                    DeadAction::Retry => {
                        self.revive(&ev).await?;
                        op("ack dead event", d.acker.ack(BasicAckOptions::default()))
                            .await
                            .map_err(|e| self.topo_err(e))?;
                        out.push(ev);
                    }
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        if kept {
            // Requeue everything still unacked on this channel.
            let _ = op(
                "requeue dead events",
                ch.basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                ),
            )
            .await;
        }
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        res?;
        Ok(out)
    }

    /// Puts a dead event back on its queue as a fresh first attempt.
    /// Puts a dead event back on its queue as attempt 1 (`dead_retry` only
    /// revives bodies that are envelopes).
    async fn revive(&self, ev: &DeadEvent) -> Result<(), Error> {
        let mut env = Envelope::from_slice(ev.body.as_bytes())?;
        env.attempt = 1;
        env.errors.clear();
        env.run_at_ms = None;
        self.publish_envelope(&env).await
    }
}

#[derive(Clone, Copy, PartialEq)]
enum DeadAction {
    Keep,
    Purge,
    Retry,
}

fn matches_filter(ev: &DeadEvent, f: &DeadFilter) -> bool {
    f.queue.as_ref().is_none_or(|q| *q == ev.queue)
        && f.event
            .as_ref()
            .is_none_or(|n| ev.name.as_deref() == Some(n.as_str()))
        && f.died_before_ms.is_none_or(|t| ev.died_at_ms < t)
}

#[async_trait]
impl Broker for AmqpBroker {
    fn url(&self) -> String {
        self.inner.redacted.clone()
    }

    async fn publish(&self, envelope: &Envelope) -> Result<(), Error> {
        self.inner.publish_envelope(envelope).await
    }

    async fn take(&self, queues: &[String], wait: Duration) -> Result<Option<Delivery>, Error> {
        self.inner.take(queues, wait).await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        self.inner.settle_ack(tag).await;
        Ok(())
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        next: &Envelope,
        delay: Duration,
    ) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        let mut env = next.clone();
        let at = now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        if !delay.is_zero() {
            env.run_at_ms = Some(env.run_at_ms.unwrap_or(0).max(at));
        }
        self.inner.publish_envelope(&env).await?;
        self.inner.settle_ack(tag).await;
        Ok(())
    }

    async fn dead(&self, delivery: &Delivery, dead: &DeadEvent) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        let inner = &self.inner;
        let body = serde_json::to_vec(dead).map_err(|e| inner.err(e))?;
        let mut headers = FieldTable::default();
        headers.insert(HEADER_QUEUE.into(), long_str(&dead.queue));
        if let Some(n) = &dead.name {
            headers.insert(HEADER_NAME.into(), long_str(n));
        }
        headers.insert(HEADER_DIED_AT.into(), i64_of(dead.died_at_ms));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(dead.id.as_str().into())
            .with_type("action_event.dead".into())
            .with_headers(headers);
        let target = inner.dead_name();
        let deadline = Instant::now() + inner.publish_timeout;
        inner
            .publish_raw(&target, None, &body, props, deadline)
            .await?;
        inner.settle_ack(tag).await;
        Ok(())
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), Error> {
        let tag = self.inner.tag(delivery)?;
        self.inner.settle_nack(tag).await;
        Ok(())
    }

    async fn dead_list(&self, filter: &DeadFilter) -> Result<Vec<DeadEvent>, Error> {
        let mut out = self
            .inner
            .dead_walk(|ev| {
                let _ = ev;
                DeadAction::Keep
            })
            .await?;
        out.retain(|ev| matches_filter(ev, filter));
        out.sort_by_key(|ev| ev.died_at_ms);
        Ok(out)
    }

    async fn dead_retry(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        let mut found = 0u64;
        let mut retried = 0u64;
        self.inner
            .dead_walk(|ev| {
                let hit = match id {
                    Some(id) => ev.id == id,
                    None => matches_filter(ev, filter),
                };
                if !hit {
                    return DeadAction::Keep;
                }
                found += 1;
                // A foreign message kept raw cannot be put back as an
                // event: it stays where a person sees it (as on SQLite).
                if Envelope::from_slice(ev.body.as_bytes()).is_err() {
                    tracing::warn!(
                        id = %ev.id,
                        "dead event {} is not an envelope (a raw message); not retried",
                        ev.id
                    );
                    return DeadAction::Keep;
                }
                retried += 1;
                DeadAction::Retry
            })
            .await?;
        if let (Some(id), 0) = (id, found) {
            return Err(Error::NoSuchDeadEvent(id.to_string()));
        }
        Ok(retried)
    }

    async fn dead_purge(&self, id: Option<&str>, filter: &DeadFilter) -> Result<u64, Error> {
        let done = self
            .inner
            .dead_walk(|ev| {
                let hit = match id {
                    Some(id) => ev.id == id,
                    None => matches_filter(ev, filter),
                };
                if hit {
                    DeadAction::Purge
                } else {
                    DeadAction::Keep
                }
            })
            .await?;
        let n = done
            .iter()
            .filter(|ev| match id {
                Some(id) => ev.id == id,
                None => matches_filter(ev, filter),
            })
            .count() as u64;
        if let (Some(id), 0) = (id, n) {
            return Err(Error::NoSuchDeadEvent(id.to_string()));
        }
        Ok(n)
    }

    async fn depth(&self, queue: &str) -> Result<QueueDepth, Error> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.publish_timeout;
        let p = inner.pub_conn(deadline).await?;
        let full = inner.full_name(queue);
        let ch = op("open channel", p.conn.create_channel())
            .await
            .map_err(|e| inner.topo_err(e))?;
        let res = inner.declare(&ch, &full, None).await;
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        let waiting = res.map_err(|e| inner.topo_err(e))?;
        Ok(QueueDepth {
            waiting: u64::from(waiting),
            scheduled: None,
            oldest_age: None,
        })
    }

    async fn announce(&self, presence: Arc<dyn Presence>) -> Result<(), Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(presence_loop(Arc::downgrade(&self.inner), presence, tx));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.inner.err(format!(
                "cannot answer status requests yet ({e}); retrying in the background"
            ))),
            Err(_) => Err(self.inner.err("the broker was closed")),
        }
    }

    async fn pollers(&self, wait: Duration) -> Result<Option<Vec<PollerReport>>, Error> {
        const REPLY_TO: &str = "amq.rabbitmq.reply-to";
        let inner = &self.inner;
        let deadline = Instant::now() + inner.publish_timeout;
        let p = inner.pub_conn(deadline).await?;
        let ch = op("open channel", p.conn.create_channel())
            .await
            .map_err(|e| inner.topo_err(e))?;
        let res = async {
            let exchange = inner.status_name();
            declare_status_exchange(inner, &ch, &exchange).await?;
            // Direct reply-to: consume the pseudo-queue first, then publish
            // on the same channel.
            let mut replies = op(
                "consume replies",
                ch.basic_consume(
                    REPLY_TO.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            op(
                "ask for status",
                ch.basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    b"status",
                    BasicProperties::default().with_reply_to(REPLY_TO.into()),
                ),
            )
            .await?;
            let mut out = Vec::new();
            let until = Instant::now() + wait;
            while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, replies.next()).await {
                match serde_json::from_slice::<PollerReport>(&d.data) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(error = %e, "an unreadable status reply; ignored"),
                }
            }
            Ok::<_, TopoErr>(out)
        }
        .await;
        let _ = tokio::time::timeout(OP_TIMEOUT, ch.close(200, "OK".into())).await;
        let mut out = res.map_err(|e| inner.topo_err(e))?;
        out.sort_by(|a, b| (&a.host, &a.id, a.pid).cmp(&(&b.host, &b.id, b.pid)));
        Ok(Some(out))
    }
}

/// Declares the status fanout exchange (idempotent).
async fn declare_status_exchange(inner: &Inner, ch: &Channel, name: &str) -> Result<(), TopoErr> {
    lock(&inner.all_declared).insert((true, name.to_string()));
    op(
        "declare the status exchange",
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
}

/// One presence subscription: a connection of its own (no lapin recovery:
/// [`presence_loop`] rebuilds it), a server-named exclusive queue bound to
/// `<prefix>status`, and its consumer.
struct PresenceSub {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl PresenceSub {
    async fn open(inner: &Inner) -> Result<PresenceSub, String> {
        let conn = inner.connect_with("status", false).await?;
        let sub = async {
            let ch = op("open channel", conn.create_channel()).await?;
            let exchange = inner.status_name();
            declare_status_exchange(inner, &ch, &exchange).await?;
            let q = op(
                "declare the status queue",
                ch.queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            op(
                "bind the status queue",
                ch.queue_bind(
                    q.name().clone(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
            let consumer = op(
                "consume the status queue",
                ch.basic_consume(
                    q.name().clone(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok::<_, TopoErr>((ch, consumer))
        }
        .await;
        match sub {
            Ok((channel, consumer)) => Ok(PresenceSub {
                conn,
                channel,
                consumer,
            }),
            Err(e) => {
                let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "OK".into())).await;
                Err(match e {
                    TopoErr::Fatal(e) => e.to_string(),
                    TopoErr::Transient(m) => m,
                })
            }
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(OP_TIMEOUT, self.conn.close(200, "OK".into())).await;
    }
}

/// Answers status pings for as long as the broker is open: every message
/// with a `reply_to` gets `presence.report()` as JSON, published to the
/// default exchange with that routing key. When the consumer ends or errors
/// (connection loss), everything is rebuilt with backoff. `first` gets the
/// outcome of the first attempt.
async fn presence_loop(
    inner: Weak<Inner>,
    presence: Arc<dyn Presence>,
    first: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    let mut pause = Duration::from_millis(200);
    // Whether the subscription was lost (or never made): its rebuild is logged.
    let mut lost = false;
    let alive = |inner: &Weak<Inner>| {
        inner
            .upgrade()
            .is_some_and(|i| !i.closed.load(Ordering::SeqCst))
    };
    while alive(&inner) {
        let opened = match inner.upgrade() {
            Some(i) => PresenceSub::open(&i).await,
            None => return,
        };
        let mut sub = match opened {
            Ok(sub) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                if lost {
                    tracing::info!("answering status requests again");
                    lost = false;
                }
                pause = Duration::from_millis(200);
                sub
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to status requests; retrying in {pause:?}");
                lost = true;
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                n = sub.consumer.next() => n,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !alive(&inner) {
                        break;
                    }
                    continue;
                }
            };
            let ping = match next {
                Some(Ok(ping)) => ping,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "status subscription lost; resubscribing");
                    lost = true;
                    break;
                }
                None => {
                    tracing::warn!("status subscription ended; resubscribing");
                    lost = true;
                    break;
                }
            };
            let Some(reply_to) = ping.properties.reply_to().clone() else {
                continue;
            };
            let body = match serde_json::to_vec(&presence.report()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode the status report");
                    continue;
                }
            };
            let published = tokio::time::timeout(
                OP_TIMEOUT,
                sub.channel.basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_content_type("application/json".into()),
                ),
            )
            .await;
            if !matches!(published, Ok(Ok(_))) {
                tracing::debug!("could not answer a status request");
            }
        }
        sub.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_messages_carry_no_header_but_run_at() {
        let plain = envelope_properties(None);
        assert!(plain.headers().is_none(), "{plain:?}");
        assert_eq!(
            plain,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
            "an event message is persistent JSON and nothing else"
        );
        let delayed = envelope_properties(Some(7));
        let headers = delayed.headers().as_ref().expect("headers");
        assert_eq!(headers.inner().len(), 1);
        assert_eq!(header_u64(&delayed, HEADER_RUN_AT), Some(7));
    }

    #[test]
    fn event_id_and_name_from_the_body_else_the_properties() {
        let env = Envelope::new("hello_world", "high", serde_json::json!({"a": 1}));
        let body = serde_json::to_vec(&env).expect("json");
        let none = BasicProperties::default();
        assert_eq!(
            ident_of(&none, &body),
            (env.id.to_string(), "hello_world".to_string())
        );
        let foreign = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_type("t".into());
        assert_eq!(
            ident_of(&foreign, b"not json"),
            ("m-1".to_string(), "t".to_string())
        );
        assert_eq!(ident_of(&none, b"{}"), ("?".to_string(), "?".to_string()));
    }

    #[test]
    fn run_at_from_the_header_else_the_body() {
        let plain = BasicProperties::default();
        let body = br#"{"v":1,"id":"x","name":"n","queue":"q","params":{},"run_at_ms":1234}"#;
        assert_eq!(run_at_of(&plain, body), Some(1234));
        let none = br#"{"v":1,"id":"x","name":"n","queue":"q","params":{"note":"run_at_ms"}}"#;
        assert_eq!(run_at_of(&plain, none), None);
        let named = br#"{"v":1,"id":"x","name":"n","queue":"q","params":{"run_at_ms":5}}"#;
        assert_eq!(
            run_at_of(&plain, named),
            None,
            "a param of that name is not the field"
        );
        let mut h = FieldTable::default();
        h.insert(HEADER_RUN_AT.into(), i64_of(99));
        assert_eq!(run_at_of(&plain.with_headers(h), none), Some(99));
    }

    #[test]
    fn url_options_are_taken_out() {
        let c = parse_url(
            "amqp://u:p@h:5672/%2f?prefix=x.&publish_timeout=2s&prefetch=7&frame_max=8192",
        )
        .expect("valid");
        assert_eq!(c.prefix, "x.");
        assert_eq!(c.publish_timeout, Duration::from_secs(2));
        assert_eq!(c.prefetch, 7);
        assert_eq!(
            c.lapin_url,
            "amqp://u:p@h:5672/%2f?frame_max=8192&heartbeat=30"
        );
        let c = parse_url("amqp://h/%2f?heartbeat=5").expect("valid");
        assert_eq!(c.lapin_url, "amqp://h/%2f?heartbeat=5&frame_max=131072");
        assert_eq!(c.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn consumer_timeout_option() {
        let c = parse_url("amqp://h/%2f?consumer_timeout=45m&prefix=x.").expect("valid");
        assert_eq!(c.consumer_timeout, Duration::from_secs(45 * 60));
        assert_eq!(c.lapin_url, "amqp://h/%2f?heartbeat=30&frame_max=131072");
        assert_eq!(
            parse_url("amqp://h/%2f").expect("valid").consumer_timeout,
            DEFAULT_CONSUMER_TIMEOUT
        );
        for bad in ["soon", "0s", "500ms"] {
            let e = parse_url(&format!("amqp://u:secret@h/%2f?consumer_timeout={bad}"))
                .err()
                .expect("error");
            assert!(e.to_string().contains("consumer_timeout"), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn cacertfile_is_read_and_taken_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(&ca, pem).expect("write");
        let c = parse_url(&format!(
            "amqps://u:p@h/%2f?cacertfile={}&prefix=x.",
            ca.display()
        ))
        .expect("valid");
        assert_eq!(c.tls.cert_chain.as_deref(), Some(pem));
        assert_eq!(
            c.lapin_url,
            "amqps://u:p@h/%2f?heartbeat=30&frame_max=131072"
        );
        assert!(
            parse_url("amqps://u:p@h/%2f")
                .expect("valid")
                .tls
                .cert_chain
                .is_none()
        );
    }

    #[test]
    fn bad_urls_are_redacted() {
        let e = parse_url("amqp://u:secret@h/%2f?prefetch=0")
            .err()
            .expect("error");
        let text = e.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("prefetch"), "{text}");
        assert!(parse_url("amqp://u:secret@h/?publish_timeout=soon").is_err());
    }

    #[test]
    fn levels() {
        assert_eq!(pick_level(1_000), 1_000);
        assert_eq!(pick_level(995), 1_000);
        assert_eq!(pick_level(3_000), 2_000);
        assert_eq!(pick_level(10), 100);
        assert_eq!(pick_level(10 * 86_400_000), 86_400_000);
    }
}
