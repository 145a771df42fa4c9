//! The slot of the current client: a tokio task-local (installed for one
//! future by `Client::scope`, a poller, or a test mode's `scope`), else a
//! thread-local (a test mode's guard), else nothing (the caller falls back
//! to the global client). See the [parent module](super).

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Client;
use crate::Error;
use crate::envelope::{Envelope, EventId};
use crate::registry::BoxFuture;

/// Where events go instead of a broker: a test mode (see
/// [`crate::testing`]), which records or runs them.
pub(crate) trait LocalQueue: Send + Sync {
    /// Takes one checked envelope.
    fn send(&self, envelope: Envelope) -> BoxFuture<'_, Result<EventId, Error>>;
}

/// What sits in the slot of the current client.
#[derive(Clone)]
pub(crate) enum Current {
    /// A real broker.
    Client(Client),
    /// A test mode.
    Local(Arc<dyn LocalQueue>),
}

tokio::task_local! {
    static TASK_CURRENT: Current;
}

thread_local! {
    static THREAD_CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// How many test modes are active in this process (guards alive).
static LOCAL_MODES: AtomicUsize = AtomicUsize::new(0);

/// Whether a test mode is active somewhere in this process, so that
/// falling through to the global client would let an event escape a test.
pub(crate) fn outside_test_mode() -> bool {
    LOCAL_MODES.load(Ordering::SeqCst) > 0
}

/// The client installed here: this task's, else this thread's.
pub(crate) fn installed() -> Option<Current> {
    TASK_CURRENT
        .try_with(Current::clone)
        .ok()
        .or_else(|| THREAD_CURRENT.with(|c| c.borrow().clone()))
}

/// `fut` with `current` installed as its current client, wherever it runs.
pub(crate) fn scope_current<F: Future>(
    current: Current,
    fut: F,
) -> impl Future<Output = F::Output> + use<F> {
    TASK_CURRENT.scope(current, fut)
}

/// Installs `current` for this thread; returns what was there.
pub(crate) fn replace_thread_current(current: Option<Current>) -> Option<Current> {
    THREAD_CURRENT.with(|c| c.replace(current))
}

/// A test mode starts (`true`) or ends (`false`) somewhere in this process.
pub(crate) fn count_local_mode(active: bool) {
    if active {
        LOCAL_MODES.fetch_add(1, Ordering::SeqCst);
    } else {
        LOCAL_MODES.fetch_sub(1, Ordering::SeqCst);
    }
}
