//! Per-event CPU of each side of a throughput row (issue #20): the client's
//! (this process, or the child process a side ran in) and the broker's
//! server processes' (a RabbitMQ node's `beam.smp`, every `postgres`
//! process; SQLite runs inside the client). [`Meter`] reads them from
//! `/proc` just outside the timed section that gives a side's rate;
//! [`Table`] collects what the rows report and renders the "CPU per event,
//! each side" section.

use std::fmt::Write as _;
use std::time::Duration;

use crate::event;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (USER_HZ,
/// 100 on Linux; `libc` is not a dependency of this crate, so
/// `sysconf(_SC_CLK_TCK)` is not asked).
const TICKS_PER_SEC: u64 = 100;

/// user + system CPU of a process and of its children it reaped (utime,
/// stime, cutime, cstime: fields 14-17 of `/proc/<pid>/stat`), in clock
/// ticks. The reaped children's times keep the CPU of PostgreSQL backends
/// that exited during a reading's interval (the postmaster reaps them).
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after its last `)`, with field 3 at index 0.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut sum = 0u64;
    for i in 11..=14 {
        sum += fields.get(i)?.parse::<u64>().ok()?;
    }
    Some(sum)
}

fn pid_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn ticks(t: u64) -> Duration {
    Duration::from_millis(t * 1000 / TICKS_PER_SEC)
}

/// The pids in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
}

fn comm(pid: u32) -> Option<String> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(c.trim_end().to_string())
}

/// The inodes of the TCP sockets listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (index 9); st 0A = LISTEN.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && f.get(3) == Some(&"0A")
                && let Some(inode) = f.get(9).and_then(|i| i.parse().ok())
            {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// Whether one of `pid`'s open files is one of the sockets `inodes`.
fn holds_socket(pid: u32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|i| inodes.contains(&i))
        })
    })
}

/// The processes whose CPU is a row's broker's.
#[derive(Clone, Debug)]
pub enum Server {
    /// The broker runs inside the client (SQLite): its CPU is the client's.
    InProcess,
    /// These processes, found once: a RabbitMQ node's `beam.smp`, or every
    /// node's of a cluster (summed).
    Pids(Vec<u32>),
    /// Every process whose name (`comm`) is this, found again at each
    /// reading: PostgreSQL's backends come and go.
    Named(&'static str),
    /// No process to read; why (shown in the row's cell).
    Unknown(String),
}

impl Server {
    /// The `beam.smp` listening on the port of the RabbitMQ URL `url`
    /// (found by the listening socket's inode in `/proc/net/tcp{,6}` and
    /// `/proc/<pid>/fd`: the RabbitMQ CLI tools run `beam.smp` too, and
    /// private test nodes may run beside the broker).
    pub fn rabbitmq(url: &str) -> Server {
        let port = match url.parse::<lapin::uri::AMQPUri>() {
            Ok(u) => u.authority.port,
            Err(e) => return Server::Unknown(format!("beam.smp not found: bad URL ({e})")),
        };
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return Server::Unknown(format!(
                "beam.smp not found: no local process listens on port {port}"
            ));
        }
        let beams: Vec<u32> = pids()
            .filter(|p| comm(*p).as_deref() == Some("beam.smp"))
            .collect();
        match beams.into_iter().find(|p| holds_socket(*p, &inodes)) {
            Some(pid) => Server::Pids(vec![pid]),
            None => Server::Unknown(format!(
                "beam.smp not found: no beam.smp holds the socket listening on port {port}"
            )),
        }
    }

    /// The `beam.smp` of each node (`None`: a node whose VM was not found).
    pub fn nodes(pids: impl IntoIterator<Item = Option<u32>>) -> Server {
        let pids: Option<Vec<u32>> = pids.into_iter().collect();
        match pids {
            Some(p) if !p.is_empty() => Server::Pids(p),
            _ => Server::Unknown("beam.smp not found for every node".into()),
        }
    }

    /// Every `postgres` process (the server on this machine).
    pub fn postgres() -> Server {
        Server::Named("postgres")
    }

    /// The processes' CPU so far, in clock ticks.
    fn read(&self) -> Reading {
        match self {
            Server::InProcess => Reading::InProcess,
            Server::Unknown(why) => Reading::Unknown(why.clone()),
            Server::Pids(pids) => {
                let mut sum = 0;
                for &pid in pids {
                    match pid_ticks(pid) {
                        Some(t) => sum += t,
                        None => return Reading::Unknown(format!("beam.smp (pid {pid}) is gone")),
                    }
                }
                Reading::Ticks(sum)
            }
            Server::Named(name) => {
                let mut found = false;
                let mut sum = 0;
                for pid in pids().filter(|p| comm(*p).as_deref() == Some(name)) {
                    if let Some(t) = pid_ticks(pid) {
                        found = true;
                        sum += t;
                    }
                }
                if found {
                    Reading::Ticks(sum)
                } else {
                    Reading::Unknown(format!("no `{name}` process found"))
                }
            }
        }
    }
}

enum Reading {
    Ticks(u64),
    InProcess,
    Unknown(String),
}

/// The broker's CPU per event of one run.
#[derive(Clone, Debug)]
pub enum BrokerCpu {
    PerEvent(Duration),
    /// Inside the client (SQLite).
    InProcess,
    /// Not measured; why.
    Unknown(String),
}

/// Each process's CPU per event of one run of one side.
#[derive(Clone, Debug)]
pub struct Cpu {
    /// This process's, or the child process's the side ran in.
    pub client: Duration,
    /// Whether `client` is a child process's (its whole life).
    pub child: bool,
    pub broker: BrokerCpu,
}

impl Default for Cpu {
    fn default() -> Cpu {
        Cpu {
            client: Duration::ZERO,
            child: false,
            broker: BrokerCpu::Unknown("not run".into()),
        }
    }
}

fn per_event(d: Duration, n: u64) -> Duration {
    Duration::from_secs_f64(d.as_secs_f64() / n.max(1) as f64)
}

/// Reads the client's and the broker's CPU at the start of a timed
/// section; [`Meter::stop`] at its end gives each one's per event.
pub struct Meter {
    server: Server,
    client: Duration,
    broker: Reading,
}

impl Meter {
    /// Call right before the section's clock starts (the broker is read
    /// first, so the client's reading does not count a `/proc` scan).
    pub fn start(server: &Server) -> Meter {
        let broker = server.read();
        Meter {
            server: server.clone(),
            client: event::cpu_time(),
            broker,
        }
    }

    /// Call right after the section's clock stops; `n` events ran in it.
    pub fn stop(self, n: u64) -> Cpu {
        let client = event::cpu_time().saturating_sub(self.client);
        self.finish(n, client, false)
    }

    /// For a side that ran in a child process: `child_cpu` is that
    /// process's CPU (it reports its whole life).
    pub fn stop_child(self, n: u64, child_cpu: Duration) -> Cpu {
        self.finish(n, child_cpu, true)
    }

    fn finish(self, n: u64, client: Duration, child: bool) -> Cpu {
        let broker = match (self.broker, self.server.read()) {
            (Reading::Ticks(a), Reading::Ticks(b)) => {
                BrokerCpu::PerEvent(per_event(ticks(b.saturating_sub(a)), n))
            }
            (Reading::InProcess, _) => BrokerCpu::InProcess,
            (Reading::Unknown(why), _) | (_, Reading::Unknown(why)) => BrokerCpu::Unknown(why),
            (Reading::Ticks(_), Reading::InProcess) => BrokerCpu::Unknown("changed".into()),
        };
        Cpu {
            client: per_event(client, n),
            child,
            broker,
        }
    }
}

/// A side's rate and CPU in one timed run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// events/s
    pub rate: f64,
    pub cpu: Cpu,
}

impl Run {
    /// `n` events in `elapsed`, costing `cpu`.
    pub fn new(n: u64, elapsed: Duration, cpu: Cpu) -> Run {
        Run {
            rate: crate::report::rate(n, elapsed),
            cpu,
        }
    }

    /// The faster of `self` and `best` (the run a row shows, with its CPU).
    pub fn best(self, best: &Run) -> Run {
        if self.rate > best.rate {
            self
        } else {
            best.clone()
        }
    }
}

/// The CPU of both sides of one row (`fw`: `None` when the framework side
/// did not run) and what the baseline is.
#[derive(Clone, Debug)]
pub struct Pair {
    pub fw: Option<Cpu>,
    pub raw: Cpu,
    pub label: String,
}

/// The rows' CPU, collected as they are pushed to the report.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<(String, &'static str, Pair)>,
}

fn client_cell(c: &Cpu) -> String {
    let us = format!("{:.1}", c.client.as_secs_f64() * 1e6);
    if c.child {
        format!("{us} (own process)")
    } else {
        us
    }
}

fn broker_cell(c: &Cpu) -> String {
    match &c.broker {
        BrokerCpu::PerEvent(d) => format!("{:.1}", d.as_secs_f64() * 1e6),
        BrokerCpu::InProcess => "in process".into(),
        BrokerCpu::Unknown(why) => why.clone(),
    }
}

impl Table {
    pub fn push(&mut self, what: &str, backend: &'static str, pair: Pair) {
        self.rows.push((what.to_string(), backend, pair));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The "CPU per event, each side" section (empty without rows).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        if self.rows.is_empty() {
            return s;
        }
        let _ = writeln!(s, "## CPU per event, each side\n");
        let _ = writeln!(
            s,
            "µs of CPU (user + system) per event, read from /proc right before and after \
             the timed section of each side's run shown in the table above (its best). \
             Client: this process, or \"own process\": the child process the side ran in \
             (its whole life). Broker: the `beam.smp` of the RabbitMQ node the row talks to \
             (a cluster: all its nodes), every `postgres` process; SQLite runs in the client. \
             The broker's CPU is all it did meanwhile, for any client. /proc counts 10 ms \
             clock ticks: a cell is ± 10 ms ÷ the row's events (± 0.33 µs/ev at 30,000; a \
             `--quick` run's cells are that coarse). `--compare` prints this table again at \
             the end of stdout.\n"
        );
        let _ = writeln!(
            s,
            "| Row | Backend | action_event: client µs/ev | action_event: broker µs/ev | \
             Baseline: client µs/ev | Baseline: broker µs/ev | Baseline |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (what, backend, p) in &self.rows {
            let (fc, fb) = match &p.fw {
                Some(f) => (client_cell(f), broker_cell(f)),
                None => ("—".into(), "—".into()),
            };
            let cells = [
                what.clone(),
                backend.to_string(),
                fc,
                fb,
                client_cell(&p.raw),
                broker_cell(&p.raw),
                p.label.clone(),
            ]
            .map(|c| c.replace('|', "\\|"));
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let line = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 110 220 3 4 20 0 1";
        assert_eq!(stat_ticks(line), Some(110 + 220 + 3 + 4));
        assert_eq!(stat_ticks("42 (x) S 1 2"), None);
    }

    #[test]
    fn the_client_side_counts_cpu_burnt_in_this_process() {
        // This thread's own CPU, read apart from the meter's reading of
        // the whole process (spinning for a wall time gives little CPU on
        // a busy box).
        let thread_cpu = || {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
            stat_ticks(&stat).unwrap_or(0)
        };
        let m = Meter::start(&Server::InProcess);
        let (t0, started) = (thread_cpu(), std::time::Instant::now());
        let mut x = 0u64;
        while thread_cpu() < t0 + 20 && started.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let cpu = m.stop(1000);
        // At least 200 ms spun over 1,000 events: 200 µs each, less one
        // 10 ms tick of the reading's resolution.
        assert!(cpu.client >= Duration::from_micros(190), "{cpu:?}");
        assert!(matches!(cpu.broker, BrokerCpu::InProcess));
    }

    #[test]
    fn a_missing_server_says_why() {
        let m = Meter::start(&Server::Pids(vec![u32::MAX]));
        match m.stop(10).broker {
            BrokerCpu::Unknown(why) => assert!(why.contains("gone"), "{why}"),
            other => panic!("{other:?}"),
        }
        match Server::rabbitmq("amqp://127.0.0.1:1/%2f") {
            Server::Unknown(why) => assert!(why.starts_with("beam.smp not found"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_rabbitmq_broker_on_5672_is_found_when_required() {
        if std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() != Ok("1") {
            return;
        }
        let s = Server::rabbitmq("amqp://guest:guest@127.0.0.1:5672/%2f");
        let Server::Pids(pids) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(comm(pids[0]).as_deref(), Some("beam.smp"));
    }

    /// A query in a backend that exits before the reading still counts
    /// (through the postmaster's reaped-children times).
    #[test]
    fn postgres_counts_a_backend_that_exited() {
        if std::env::var("ACTION_EVENT_REQUIRE_POSTGRES").as_deref() != Ok("1") {
            return;
        }
        let m = Meter::start(&Server::postgres());
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c"])
            .arg("SELECT count(*) FROM generate_series(1, 5000000)")
            .output()
            .expect("psql");
        assert!(out.status.success(), "{out:?}");
        std::thread::sleep(Duration::from_millis(200)); // the postmaster reaps it
        match m.stop(1).broker {
            BrokerCpu::PerEvent(d) => assert!(d >= Duration::from_millis(100), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }
}
