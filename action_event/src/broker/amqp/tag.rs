use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lapin::{BasicProperties, Channel};

use super::Inner;
use super::ack_batch::AckBatch;
use super::wire::ident_of;
use crate::Error;
use crate::broker::Delivery;
/// What a [`Delivery`] of this backend carries in its `tag`, as an
/// `Arc<Tag>` shared with the renewer (see *Long events*).
pub(super) struct Tag {
    /// Key in `Inner::held`; 0 when not registered.
    pub(super) seq: u64,
    /// The broker delivery that stands for the event now. Renewals and
    /// settles hold this lock, so they never interleave.
    pub(super) cur: tokio::sync::Mutex<Current>,
    /// The consumer's count of unacked deliveries (none for `basic.get`).
    pub(super) unacked: Option<Arc<AtomicUsize>>,
    /// The count of handed-out deliveries on its consumer's channel.
    pub(super) in_hand: Option<Arc<AtomicUsize>>,
    /// Whether this delivery still counts in `unacked`.
    pub(super) counted: AtomicBool,
    /// Whether it still counts in `in_hand`.
    pub(super) held_open: AtomicBool,
    pub(super) done: AtomicBool,
    /// A renewal task is running for it.
    pub(super) renewing: AtomicBool,
    /// Its delivery was lost (channel closed) and that was logged.
    pub(super) lost: AtomicBool,
    /// The logical queue.
    pub(super) queue: String,
    pub(super) full_queue: String,
    pub(super) properties: BasicProperties,
    /// The message, for renewal copies and [`Tag::ident`].
    pub(super) body: Vec<u8>,
    pub(super) taken: std::time::Instant,
}

/// The delivery a [`Tag`] settles.
pub(super) struct Current {
    pub(super) acker: lapin::Acker,
    /// Once renewed: the hold queue and the channel the copy is unacked on.
    pub(super) hold: Option<(String, Channel)>,
    /// When this delivery was handed out or fetched.
    pub(super) since: std::time::Instant,
    pub(super) renewals: u32,
    /// The `alive` flag of the consume generation this delivery is on (none
    /// only when its consumer was dropped before it was handed out).
    pub(super) alive: Option<Arc<AtomicBool>>,
    /// The acks of its consumer channel and its delivery tag there (none
    /// once renewed: the copy is on another channel).
    pub(super) batch: Option<(Arc<AckBatch>, u64)>,
}

impl Current {
    /// Its connection is gone: an ack or nack would never be sent (the
    /// broker has requeued the event).
    pub(super) fn gone(&self) -> bool {
        self.alive
            .as_ref()
            .is_some_and(|a| !a.load(Ordering::SeqCst))
    }
}

impl Tag {
    /// This delivery is done with (its ack or nack is due, or it was
    /// renewed): it no longer counts against the prefetch. (Counting it until
    /// the broker has the ack would make a level look full while acks are
    /// on their way, and a full level is checked with `basic.get`.)
    pub(super) fn uncount(&self) {
        if self.counted.swap(false, Ordering::SeqCst)
            && let Some(u) = &self.unacked
        {
            let _ = u.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        }
    }

    /// Its ack or nack was sent (or it was renewed): it no longer keeps its
    /// consumer channel open.
    pub(super) fn release_channel(&self) {
        if self.held_open.swap(false, Ordering::SeqCst)
            && let Some(u) = &self.in_hand
        {
            let _ = u.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1));
        }
    }

    /// The event id and name, for logs and the hold queue name: from the
    /// envelope in the body (event messages carry them nowhere else), else
    /// from `message_id` and `type` (a foreign message), else `?`.
    pub(super) fn ident(&self) -> (String, String) {
        ident_of(&self.properties, &self.body)
    }

    /// The event id (see [`Tag::ident`]).
    pub(super) fn event_id(&self) -> String {
        self.ident().0
    }
}

impl Inner {
    pub(super) fn tag<'a>(&self, delivery: &'a Delivery) -> Result<&'a Tag, Error> {
        delivery
            .tag
            .downcast_ref::<Arc<Tag>>()
            .map(|t| &**t)
            .ok_or_else(|| self.err("this delivery was not taken from this broker"))
    }
}
