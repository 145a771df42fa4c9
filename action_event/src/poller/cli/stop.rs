//! `poller stop`: stops pollers through their PID files (SIGTERM, then a
//! wait until they have finished their events in hand).

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;

use super::{Failed, PidDirArg, parse_duration};
use crate::Error;
use crate::poller::pidfile;

#[derive(Debug, Args)]
pub(super) struct StopArgs {
    /// The poller to stop; without it, every poller of the PID dir.
    #[arg(long)]
    pub(super) id: Option<String>,

    #[command(flatten)]
    pub(super) pid_dir: PidDirArg,

    /// How long the pollers may take to finish their events in hand (the
    /// `--shutdown-timeout` they were started with); `stop` waits this long
    /// plus 10 s before it reports one as still running.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(super) shutdown_timeout: Duration,
}

pub(super) fn run(args: &StopArgs) -> Result<(), Failed> {
    let dir: &Path = &args.pid_dir.pid_dir;
    let targets: Vec<String> = match &args.id {
        Some(id) => vec![id.clone()],
        None => pidfile::list_pollers(dir)
            .into_iter()
            .map(|p| p.id)
            .collect(),
    };
    if targets.is_empty() {
        println!("No pollers in {}", dir.display());
        return Ok(());
    }
    let mut failed = Vec::new();
    for id in targets {
        let path = pidfile::pid_path(dir, &id);
        let Some(pid) = pidfile::read_pid(&path) else {
            println!("poller {id}: no PID file at {}", path.display());
            continue;
        };
        if !pidfile::process_alive(pid) {
            pidfile::release(dir, &id, pid);
            println!("poller {id}: stale PID file named pid {pid}, which is not running; removed");
            continue;
        }
        if let Err(e) = pidfile::signal(pid, libc::SIGTERM) {
            failed.push(format!("poller {id} (pid {pid}): cannot signal: {e}"));
            continue;
        }
        println!("poller {id}: stopping pid {pid} (it finishes its events in hand)");
        let limit = args.shutdown_timeout + Duration::from_secs(10);
        let started = Instant::now();
        while pidfile::process_alive(pid) && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        if pidfile::process_alive(pid) {
            failed.push(format!(
                "poller {id} (pid {pid}) still runs after {}",
                humantime::format_duration(limit)
            ));
        } else {
            pidfile::release(dir, &id, pid);
            println!("poller {id}: stopped");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Registry(failed.join("; ")).into())
    }
}
