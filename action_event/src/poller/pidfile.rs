//! PID files: `<pid-dir>/poller.<id>.pid` holds the PID of the poller that
//! owns that id (nothing else, so `kill $(cat tmp/pids/poller.1.pid)` works);
//! `<pid-dir>/poller.<id>.json` beside it describes that poller for `status`.
//!
//! Handoff, as in the original ActionEvent: a poller that finds its PID file
//! no longer names it finishes the events in hand and exits. Starting a new
//! poller with the same id is how new code replaces old code without a gap.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// What `status` shows about one poller.
///
/// ```
/// use action_event::poller::PollerInfo;
/// let info = PollerInfo { id: "1".into(), pid: 42, host: "web1".into(), queues: vec!["high".into()],
///     concurrency: 4, broker: "sqlite://action_event.db".into(), started_at_ms: 0 };
/// assert_eq!(info.pid, 42);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PollerInfo {
    /// The poller id (`--id`).
    pub id: String,
    /// Its process id.
    pub pid: u32,
    /// The machine it runs on.
    pub host: String,
    /// The queues it serves, highest priority first.
    pub queues: Vec<String>,
    /// How many events it runs at once.
    pub concurrency: usize,
    /// Its broker URL, password redacted.
    pub broker: String,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: u64,
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The PID file of poller `id` in `dir`.
///
/// ```
/// let p = action_event::poller::pid_path(std::path::Path::new("tmp/pids"), "2");
/// assert_eq!(p, std::path::PathBuf::from("tmp/pids/poller.2.pid"));
/// ```
pub fn pid_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("poller.{id}.pid"))
}

pub(crate) fn info_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("poller.{id}.json"))
}

/// The PID a PID file names, if it exists and holds a number.
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether process `pid` is alive (signal 0).
///
/// ```
/// assert!(action_event::poller::process_alive(std::process::id()));
/// ```
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    if r == 0 {
        // A zombie (exited, not yet reaped by its parent) is not alive.
        return !is_zombie(pid);
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn is_zombie(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rfind(')')?;
            s[after + 1..].split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}

/// Sends `signal` to `pid`.
pub(crate) fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: plain kill(2) on a pid we read from a PID file.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes this process's PID file and info, atomically (write + rename).
/// Returns the PID the file named before, if a live process.
pub(crate) fn claim(dir: &Path, info: &PollerInfo) -> Result<Option<u32>, Error> {
    fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create PID dir {}", dir.display()), e))?;
    let path = pid_path(dir, &info.id);
    let previous = read_pid(&path).filter(|&p| p != info.pid);
    let previous_alive = previous.filter(|&p| process_alive(p));
    if let Some(p) = previous {
        if previous_alive.is_some() {
            tracing::info!(
                "Taking over poller {} from pid {p} ({}): it finishes its current events and exits",
                info.id,
                path.display()
            );
        } else {
            tracing::warn!(
                "Stale PID file {} named pid {p}, which is not running; replacing it",
                path.display()
            );
        }
    }
    let json = serde_json::to_vec_pretty(info).unwrap_or_default();
    write_atomic(&info_path(dir, &info.id), &json)?;
    write_atomic(&path, format!("{}\n", info.pid).as_bytes())?;
    Ok(previous_alive)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// Removes the PID file and info of `id` if they still name `pid`.
pub(crate) fn release(dir: &Path, id: &str, pid: u32) {
    let path = pid_path(dir, id);
    if read_pid(&path) == Some(pid) {
        let _ = fs::remove_file(&path);
        let _ = fs::remove_file(info_path(dir, id));
        let _ = fs::remove_file(super::report_file::report_path(&path));
    }
}

/// One row of `status`.
#[derive(Clone, Debug)]
pub struct PollerStatus {
    /// The id from the file name.
    pub id: String,
    /// The PID in the file.
    pub pid: Option<u32>,
    /// Whether that process is running.
    pub alive: bool,
    /// What the poller wrote about itself, when present.
    pub info: Option<PollerInfo>,
}

/// Every poller of this machine that has a PID file in `dir`, sorted by id.
///
/// ```
/// let rows = action_event::poller::list_pollers(std::path::Path::new("no/such/dir"));
/// assert!(rows.is_empty());
/// ```
pub fn list_pollers(dir: &Path) -> Vec<PollerStatus> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut rows: Vec<PollerStatus> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let id = name
                .strip_prefix("poller.")?
                .strip_suffix(".pid")?
                .to_string();
            let pid = read_pid(&e.path());
            let info = fs::read(info_path(dir, &id))
                .ok()
                .and_then(|b| serde_json::from_slice::<PollerInfo>(&b).ok())
                .filter(|i| Some(i.pid) == pid);
            Some(PollerStatus {
                alive: pid.is_some_and(process_alive),
                id,
                pid,
                info,
            })
        })
        .collect();
    rows.sort_by_key(|a| natural_key(&a.id));
    rows
}

fn natural_key(id: &str) -> (u64, String) {
    (id.parse().unwrap_or(u64::MAX), id.to_string())
}
