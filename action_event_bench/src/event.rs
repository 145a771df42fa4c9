//! The one event every row processes, the probe its handler reports to, and
//! what the hand-written baselines share with it (decoding, the clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use action_event::poller::Shutdown;
use action_event::prelude::*;

/// The event name on the wire.
pub const NAME: &str = "bench_noop";

/// A no-op event. `t` (latency rows only) is when it was queued, in
/// nanoseconds of [`clock_ns`].
#[derive(Debug, Serialize, Deserialize)]
#[action_event(name = "bench_noop", queue = "medium")]
pub struct NoopEvent {
    pub i: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<u64>,
}

impl Process for NoopEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        if let Ok(probe) = cx.state::<Arc<Probe>>() {
            probe.hit(self.t);
        }
        Ok(())
    }
}

/// Counts handler runs, records enqueue-to-start latencies, notes when the
/// `mark_at`-th run started, and then stops the poller if given `stop`.
pub struct Probe {
    done: AtomicU64,
    mark_at: u64,
    stop: Option<Shutdown>,
    reached: OnceLock<Instant>,
    latencies: Mutex<Vec<u64>>,
}

impl Probe {
    pub fn new(mark_at: u64, stop: Option<Shutdown>) -> Arc<Probe> {
        Arc::new(Probe {
            done: AtomicU64::new(0),
            mark_at,
            stop,
            reached: OnceLock::new(),
            latencies: Mutex::new(Vec::new()),
        })
    }

    pub fn hit(&self, t: Option<u64>) {
        if let Some(t) = t {
            let lat = clock_ns().saturating_sub(t);
            self.latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(lat);
        }
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.mark_at {
            let _ = self.reached.set(Instant::now());
            if let Some(stop) = &self.stop {
                stop.graceful();
            }
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// When the `mark_at`-th run started.
    pub fn reached(&self) -> Option<Instant> {
        self.reached.get().copied()
    }

    pub fn latencies(&self) -> Vec<u64> {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Nanoseconds since the first call in this process (monotonic).
pub fn clock_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The event id and message body `queue!(bench_noop, i = i)` stores, built by the
/// framework's own request type so that baselines move the same bytes.
pub fn body(i: u64, t: Option<u64>) -> anyhow::Result<(String, String)> {
    let mut req = action_event::QueueRequest::new(NAME).param("i", i);
    if let Some(t) = t {
        req = req.param("t", t);
    }
    let env = req.into_envelope()?;
    Ok((env.id.to_string(), String::from_utf8(env.to_bytes())?))
}

/// What a hand-written consumer decodes: the name and the params.
#[derive(Deserialize)]
struct RawMessage {
    name: String,
    params: NoopEvent,
}

/// The baselines' decode step: JSON to the event struct.
pub fn decode(body: &[u8]) -> anyhow::Result<NoopEvent> {
    let m: RawMessage = serde_json::from_slice(body)?;
    anyhow::ensure!(m.name == NAME, "unexpected event `{}`", m.name);
    Ok(m.params)
}

/// p50, p99 and max of `ns`, in nanoseconds.
pub fn percentiles(mut ns: Vec<u64>) -> Option<(u64, u64, u64)> {
    if ns.is_empty() {
        return None;
    }
    ns.sort_unstable();
    let at = |p: usize| ns[(ns.len() - 1) * p / 100];
    Some((at(50), at(99), ns[ns.len() - 1]))
}

/// VmHWM and VmRSS of this process, in kB.
pub fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time (user + system) this process used so far.
pub fn cpu_time() -> std::time::Duration {
    // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
