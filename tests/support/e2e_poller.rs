//! The poller the end-to-end tests run: real events that record what they
//! do to a file (`start`, `fail` just before returning `Err`, `end`), so a test can check that each ran exactly once and in which
//! order. Not part of the demo; built only as a test fixture.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use action_event::prelude::*;

/// Where events record what they do (`E2E_RECORD`).
struct Recorder(PathBuf);

impl Recorder {
    fn line(&self, what: &str, cx: &Context, tag: &str) -> Result<()> {
        let ms = action_event::envelope::now_ms();
        let line = format!(
            "{what} {} {tag} {} {} {ms}\n",
            cx.id(),
            std::process::id(),
            cx.attempt()
        );
        // One write(2) of a short line with O_APPEND: lines never interleave.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)?;
        f.write_all(line.as_bytes())?;
        Ok(())
    }
}

/// Records `start`, sleeps `sleep_ms`, records `end`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event]
struct RecordEvent {
    tag: String,
    #[serde(default)]
    sleep_ms: u64,
}

impl Process for RecordEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let rec = cx.state::<Recorder>()?;
        rec.line("start", cx, &self.tag)?;
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        }
        rec.line("end", cx, &self.tag)?;
        Ok(())
    }
}

/// Sleeps `sleep_ms`, then fails (returns `Err`) on its first `fail_times`
/// attempts, then records `end`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(retries = 3)]
struct FlakyEvent {
    tag: String,
    fail_times: u32,
    #[serde(default)]
    sleep_ms: u64,
}

impl Process for FlakyEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let rec = cx.state::<Recorder>()?;
        rec.line("start", cx, &self.tag)?;
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        }
        if cx.attempt() <= self.fail_times {
            rec.line("fail", cx, &self.tag)?;
            action_event::anyhow::bail!("flaky failure on attempt {}", cx.attempt());
        }
        rec.line("end", cx, &self.tag)?;
        Ok(())
    }
}

/// Panics every time.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(retries = 1)]
struct BoomEvent {
    tag: String,
}

impl Process for BoomEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        cx.state::<Recorder>()?.line("start", cx, &self.tag)?;
        panic!("boom in {}", self.tag);
    }
}

/// Sleeps past its one-second timeout.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(retries = 0, timeout = "1s")]
struct SleepyEvent {
    tag: String,
}

impl Process for SleepyEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        cx.state::<Recorder>()?.line("start", cx, &self.tag)?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        cx.state::<Recorder>()?.line("end", cx, &self.tag)?;
        Ok(())
    }
}

/// Typed params: `count` must be a number.
#[derive(Debug, Serialize, Deserialize)]
#[action_event]
struct TypedEvent {
    tag: String,
    count: u32,
    people_ids: Vec<u64>,
}

impl Process for TypedEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        cx.state::<Recorder>()?.line("end", cx, &self.tag)?;
        Ok(())
    }
}

/// Fails with "gate `<tag>` is closed" until the file `gates/<tag>` exists
/// next to the record file; then records `end`. For dead letters that a
/// person fixes, then retries.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(retries = 2)]
struct GatedEvent {
    tag: String,
}

impl Process for GatedEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let rec = cx.state::<Recorder>()?;
        rec.line("start", cx, &self.tag)?;
        let gate = rec
            .0
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("gates")
            .join(&self.tag);
        if !gate.exists() {
            rec.line("fail", cx, &self.tag)?;
            action_event::anyhow::bail!("gate `{}` is closed", self.tag);
        }
        rec.line("end", cx, &self.tag)?;
        Ok(())
    }
}

/// A base whose settings its children inherit: one retry, a 1s timeout.
#[action_event(base, retries = 1, timeout = "1s")]
struct ShortFuseBase;

/// Inherits `retries = 1, timeout = "1s"`: sleeps `sleep_ms`, then records `end`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(extends = ShortFuseBase)]
struct InheritsFuseEvent {
    tag: String,
    sleep_ms: u64,
}

impl Process for InheritsFuseEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let rec = cx.state::<Recorder>()?;
        rec.line("start", cx, &self.tag)?;
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        rec.line("end", cx, &self.tag)?;
        Ok(())
    }
}

/// Overrides the base's timeout with 5s (keeps its one retry).
#[derive(Debug, Serialize, Deserialize)]
#[action_event(extends = ShortFuseBase, timeout = "5s")]
struct OverridesFuseEvent {
    tag: String,
    sleep_ms: u64,
}

impl Process for OverridesFuseEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        let rec = cx.state::<Recorder>()?;
        rec.line("start", cx, &self.tag)?;
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        rec.line("end", cx, &self.tag)?;
        Ok(())
    }
}

/// Records `start`, then aborts the whole poller process (SIGABRT): an
/// event that kills its poller every time, as a segfault or an OOM kill
/// would (no error, no retry counted by the poller).
#[derive(Debug, Serialize, Deserialize)]
#[action_event]
struct AbortEvent {
    tag: String,
}

impl Process for AbortEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        cx.state::<Recorder>()?.line("start", cx, &self.tag)?;
        std::process::abort();
    }
}

/// A before filter that halts every event it runs for.
async fn halt_always(_cx: &mut Context) -> Result<Flow> {
    Ok(Flow::Halt)
}

/// Never runs: its filter halts it (acked and logged as halted).
#[derive(Debug, Serialize, Deserialize)]
#[action_event]
#[before_filter(halt_always)]
struct HaltedEvent {
    tag: String,
}

impl Process for HaltedEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        cx.state::<Recorder>()?.line("end", cx, &self.tag)?;
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    let path = std::env::var_os("E2E_RECORD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("e2e_record.txt"));
    action_event::poller::main(State::new().with(Recorder(path)))
}
