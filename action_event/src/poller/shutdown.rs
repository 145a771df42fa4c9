//! How a poller stops: a [`Shutdown`] asked for it (a signal, in the CLI),
//! its PID file names another process now, or (with `exit_when_empty`)
//! nothing is left; then the events in hand finish within the shutdown
//! timeout, or are given back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::pidfile;

/// Asks a running [`Poller`](super::Poller) to stop.
///
/// ```
/// let stop = action_event::poller::Shutdown::new();
/// stop.graceful();   // finish what is in hand, take nothing new
/// stop.immediate();  // give back what is in hand at once
/// ```
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<u8>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A handle that has not asked for anything yet.
    pub fn new() -> Self {
        Shutdown {
            tx: watch::Sender::new(0),
        }
    }
    /// Stop taking events; finish those in hand within the shutdown timeout.
    pub fn graceful(&self) {
        self.tx.send_if_modified(|v| {
            let changed = *v < 1;
            *v = (*v).max(1);
            changed
        });
    }
    /// Stop now: events in hand are given back to their queues.
    pub fn immediate(&self) {
        self.tx.send_replace(2);
    }
    /// 0: running; 1: graceful stop asked; 2: immediate stop asked.
    pub(super) fn level(&self) -> u8 {
        *self.tx.borrow()
    }
    /// Wakes when a stop is asked (see [`Shutdown::level`]).
    pub(super) fn subscribe(&self) -> watch::Receiver<u8> {
        self.tx.subscribe()
    }
}

/// Why a poller stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// `exit_when_empty` and nothing was left.
    Empty,
    /// A [`Shutdown`] (a signal, in the CLI).
    Stopped,
    /// Another poller took over its PID file.
    HandedOver {
        /// The PID the file names now.
        new_pid: u32,
    },
    /// Its PID file was removed (`poller stop`).
    PidFileRemoved,
}

/// Checks the PID file every 100 ms; the value becomes `Some` once it no
/// longer names this process.
pub(super) fn watch_pid_file(path: PathBuf) -> watch::Receiver<Option<ExitReason>> {
    let (tx, rx) = watch::channel(None);
    let me = std::process::id();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let reason = match pidfile::read_pid(&path) {
                Some(pid) if pid == me => None,
                Some(pid) => Some(ExitReason::HandedOver { new_pid: pid }),
                None if path.exists() => None, // being rewritten
                None => Some(ExitReason::PidFileRemoved),
            };
            if let Some(reason) = reason {
                let _ = tx.send(Some(reason));
                return;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Lets the events in hand finish, up to `timeout` or a second stop; then
/// tells the handlers still running to give their event back (`hard`) and
/// waits for every task, including those settling a finished event.
/// `handlers` counts the handlers running now: that is what a stop waits
/// for and what its log lines count (not the finished events whose ack or
/// retry is on its way to the broker).
pub(super) async fn finish_in_hand(
    tasks: &mut JoinSet<()>,
    exit: &ExitReason,
    handlers: &AtomicUsize,
    timeout: Duration,
    stop_rx: &mut watch::Receiver<u8>,
    hard: &watch::Sender<bool>,
) {
    let running = || handlers.load(Ordering::Relaxed);
    match exit {
        // Logged by the run loop, which asks the broker what is left.
        ExitReason::Empty | ExitReason::Stopped => {}
        ExitReason::HandedOver { new_pid } => tracing::info!(
            "PID file now names pid {new_pid}: finishing {} event(s) in hand and exiting",
            running()
        ),
        ExitReason::PidFileRemoved => tracing::info!(
            "PID file removed: finishing {} event(s) in hand and exiting",
            running()
        ),
    }
    if tasks.is_empty() {
        return;
    }
    if *exit == ExitReason::Stopped {
        match running() {
            0 => tracing::info!(
                "Stopping: {} finished event(s) settling with the broker",
                tasks.len()
            ),
            n => tracing::info!(
                "Stopping: finishing {n} event(s) in hand (up to {})",
                humantime::format_duration(timeout)
            ),
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!("Shutdown timeout: giving back {} unfinished event(s)", running());
                let _ = hard.send(true);
                break;
            }
            _ = async { stop_rx.wait_for(|v| *v >= 2).await.map(|_| ()) } => {
                tracing::warn!("Second stop: giving back {} unfinished event(s)", running());
                let _ = hard.send(true);
                break;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio::task::JoinSet;

    use super::{ExitReason, finish_in_hand};
    use crate::poller::test_log::Buf;

    /// At `--concurrency 8`, 2 handlers still run and 6 finished events
    /// wait for their ack: the stop says 2 (it said 8, the tasks).
    #[test]
    fn a_stop_counts_running_handlers_not_tasks_settling() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(move || out.clone())
            .finish();
        let _log = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut tasks = JoinSet::new();
            for _ in 0..8 {
                tasks.spawn(tokio::time::sleep(Duration::from_millis(20)));
            }
            let handlers = AtomicUsize::new(2);
            let (_stop_tx, mut stop_rx) = watch::channel(1u8);
            let (hard, _) = watch::channel(false);
            finish_in_hand(
                &mut tasks,
                &ExitReason::Stopped,
                &handlers,
                Duration::from_secs(5),
                &mut stop_rx,
                &hard,
            )
            .await;
            assert!(tasks.is_empty(), "every task is waited for");
            assert!(!*hard.borrow(), "nothing given back");
        });
        let text = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf-8");
        assert_eq!(
            text.trim(),
            "INFO Stopping: finishing 2 event(s) in hand (up to 5s)"
        );
    }
}
