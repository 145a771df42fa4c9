//! Who holds a claim: the process, so that a dead poller's events come back
//! at once instead of after the lease.
//!
//! A SQLite file is used by the processes of one machine, so the machine
//! itself can say whether a claim's owner still runs. Every broker that
//! claims registers one row in `owners` (pid, the process's start time,
//! the boot and the PID namespace it runs in), and every claim it makes
//! carries that row's id (`events.owner`, and the claim token starts with
//! it). Any broker of the file looks at the other owners every 250 ms (its
//! heartbeat), when it opens, and before it counts a queue
//! ([`Broker::depth`], which `--exit-when-empty` asks): an owner that is
//! gone has its events made ready again at once, in their place in the
//! queue (by the time they were queued, so ahead of what was queued after
//! them), with `redelivered = true` (their delivery count kept); its row is
//! deleted.
//!
//! # What tells a reused pid apart
//!
//! The process start time, field 22 of `/proc/<pid>/stat` (clock ticks
//! since boot): the kernel gives no two processes of one boot the same pid
//! *and* the same start time, and it costs nothing to read. The other
//! choice, a per-process row with a random token that a live process keeps
//! fresh, is a second, shorter lease: a process stalled for longer than it
//! (a loaded machine, a stopped debugger, `SIGSTOP`) would lose its events
//! while it lives, and they would run twice. The kernel's answer has no
//! such window: an owner is gone when `kill(pid, 0)` finds no process, when
//! the process with that pid is a zombie, or when it started at another
//! time (the pid was reused).
//!
//! # When the lease still decides
//!
//! When the owner cannot be checked, nothing is taken from it and its
//! events come back when their lease lapses, as before: an owner in another
//! PID namespace (a container sharing the file) or of another boot, a
//! `/proc` that hides other users' processes, an operating system without
//! `/proc` (this broker then records no owner), and claims made before the
//! file had owners (schema version 1) or by a build that does not write
//! them.
//!
//! [`Broker::depth`]: crate::broker::Broker::depth

use std::sync::OnceLock;

use rusqlite::{Connection, TransactionBehavior, params};

use crate::Error;

/// This process as an owner: pid, start time, boot, PID namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Process {
    pub(super) pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks from boot to its start.
    pub(super) started: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub(super) boot: String,
    /// The target of `/proc/self/ns/pid`, e.g. `pid:[4026531836]`.
    pub(super) pid_ns: String,
}

/// What the machine says about an owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Liveness {
    Alive,
    /// No such process, a zombie, or another process with the same pid.
    Gone,
    /// Cannot tell (another boot or PID namespace, a hidden `/proc`): the
    /// lease decides.
    Unknown,
}

impl Process {
    /// This process, or `None` where it cannot be described (no `/proc`).
    pub(super) fn me() -> Option<&'static Process> {
        static ME: OnceLock<Option<Process>> = OnceLock::new();
        ME.get_or_init(|| {
            let pid = std::process::id();
            let (_, started) = stat(pid)?;
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            Some(Process {
                pid,
                started,
                boot: boot.trim().to_string(),
                pid_ns: pid_ns.to_string_lossy().into_owned(),
            })
        })
        .as_ref()
    }

    /// The process in the columns `pid, started, boot, pid_ns` of `r`,
    /// starting at column `first`.
    pub(super) fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Process> {
        Ok(Process {
            pid: u32::try_from(r.get::<_, i64>(first)?).unwrap_or(0),
            started: u64::try_from(r.get::<_, i64>(first + 1)?).unwrap_or(0),
            boot: r.get(first + 2)?,
            pid_ns: r.get(first + 3)?,
        })
    }

    /// Whether `self` (an owner read from the file) still runs, as seen
    /// from `me`, a process of the same machine.
    pub(super) fn liveness(&self, me: &Process) -> Liveness {
        if self.boot != me.boot || self.pid_ns != me.pid_ns {
            return Liveness::Unknown;
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return Liveness::Unknown;
        };
        if pid <= 0 {
            return Liveness::Unknown;
        }
        // SAFETY: signal 0 only asks whether the process exists.
        if unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            return Liveness::Gone;
        }
        match stat(self.pid) {
            Some((state, _)) if state == 'Z' || state == 'X' => Liveness::Gone,
            Some((_, started)) if started != self.started => Liveness::Gone,
            Some(_) => Liveness::Alive,
            // It exists (kill said so) but `/proc` does not show it.
            None => Liveness::Unknown,
        }
    }
}

/// The state (field 3) and start time (field 22) of `/proc/<pid>/stat`.
/// The command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 come before the start time.
    let started = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, started))
}

/// Registers this process as a new owner: returns its id, or `None` where
/// it cannot be described (claims then carry no owner; the lease decides).
/// Ids are never reused (`AUTOINCREMENT`), so an id read from the file
/// names one broker of one process forever.
pub(super) fn register(conn: &Connection, now: i64) -> rusqlite::Result<Option<i64>> {
    let Some(me) = Process::me() else {
        return Ok(None);
    };
    conn.prepare_cached(
        "INSERT INTO owners (pid, started, boot, pid_ns, since) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        i64::from(me.pid),
        i64::try_from(me.started).unwrap_or(i64::MAX),
        me.boot,
        me.pid_ns,
        now
    ])?;
    Ok(Some(conn.last_insert_rowid()))
}

/// Forgets owner `id` (a broker that closes with nothing claimed).
pub(super) fn unregister(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM owners WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// The prefix of every claim token owner `id` writes.
pub(super) fn claim_prefix(id: i64) -> String {
    format!("{id}.")
}

/// Makes ready again, now, the events of every owner that is gone, and
/// deletes those owners: a plain read of `owners` first, a write only when
/// one is gone. Returns how many events came back. `url` and `path` name
/// the file in the log and in errors.
pub(super) fn reclaim_gone(
    conn: &mut Connection,
    now: i64,
    url: &str,
    path: &std::path::Path,
) -> Result<usize, Error> {
    let Some(me) = Process::me() else {
        return Ok(0);
    };
    let fail = |e: rusqlite::Error| {
        Error::broker(
            url,
            format!(
                "owners of `{}`: {e} (their events come back when their lease lapses)",
                path.display()
            ),
        )
    };
    let gone: Vec<(i64, u32)> = {
        let mut stmt = conn
            .prepare_cached("SELECT id, pid, started, boot, pid_ns FROM owners")
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, Process::from_row(r, 1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(fail)?;
        rows.into_iter()
            .filter(|(_, p)| p.liveness(me) == Liveness::Gone)
            .map(|(id, p)| (id, p.pid))
            .collect()
    };
    if gone.is_empty() {
        return Ok(0);
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let mut back = 0;
    for (id, pid) in gone {
        // Only claims this owner wrote: a build without owners that took
        // the row after the owner's lease lapsed left `owner` as it was.
        let n = tx
            .prepare_cached(RECLAIM)
            .and_then(|mut s| s.execute(params![id, claim_prefix(id), now]))
            .map_err(fail)?;
        let still = tx
            .prepare_cached("DELETE FROM owners WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(fail)?;
        if n > 0 && still > 0 {
            tracing::warn!(
                broker = %url,
                "poller process {pid} is gone (owner #{id}): {n} event(s) it held are ready again"
            );
        }
        back += n;
    }
    tx.commit().map_err(fail)?;
    Ok(back)
}

/// Makes the events of a gone owner ready now, in their place in the queue
/// (by the time they were queued, ahead of events queued after them): `?1`
/// owner id, `?2` its claim prefix, `?3` now. The delivery count stays, so
/// they are handed out with `redelivered = true`, as after a lapsed lease.
pub(super) const RECLAIM: &str = "UPDATE events SET visible_at = MIN(queued_at, ?3), \
     claim = NULL, owner = NULL \
     WHERE owner = ?1 AND substr(claim, 1, length(?2)) = ?2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = Process::me().expect("this process on Linux");
        assert_eq!(me.liveness(me), Liveness::Alive);
        let reused = Process {
            started: me.started + 1,
            ..me.clone()
        };
        assert_eq!(reused.liveness(me), Liveness::Gone);
        let elsewhere = Process {
            pid_ns: "pid:[1]".into(),
            ..me.clone()
        };
        assert_eq!(elsewhere.liveness(me), Liveness::Unknown);
    }
}
