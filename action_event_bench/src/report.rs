//! The table: rows, targets, PASS/MISS, and the markdown file.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::cpu;

/// A target a row is judged against.
#[derive(Clone, Debug)]
pub enum Target {
    /// ratio ≥ x
    AtLeast(f64),
    /// ratio ≤ x
    AtMost(f64),
    /// a check of its own: the text shown and whether it holds
    Check { text: String, pass: bool },
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: String,
    pub backend: &'static str,
    pub framework: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    /// A row that did not run: `skipped: ...` or `error: ...`.
    pub status: Option<String>,
    /// Each side's CPU per event (throughput rows), for the CPU section.
    pub cpu: Option<cpu::Pair>,
}

impl Row {
    pub fn new(backend: &'static str, what: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            backend,
            framework: String::new(),
            baseline: String::new(),
            ratio: None,
            target: None,
            status: None,
            cpu: None,
        }
    }
    pub fn framework(mut self, s: impl Into<String>) -> Row {
        self.framework = s.into();
        self
    }
    pub fn baseline(mut self, s: impl Into<String>) -> Row {
        self.baseline = s.into();
        self
    }
    pub fn ratio(mut self, r: f64) -> Row {
        self.ratio = Some(r);
        self
    }
    pub fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }
    /// Each side's CPU per event (`fw`: `None` if that side did not run)
    /// and the baseline's name, for the "CPU per event, each side" table.
    pub fn cpu(mut self, fw: Option<&cpu::Cpu>, raw: &cpu::Cpu, label: impl Into<String>) -> Row {
        self.cpu = Some(cpu::Pair {
            fw: fw.cloned(),
            raw: raw.clone(),
            label: label.into(),
        });
        self
    }

    fn target_text(&self) -> String {
        match &self.target {
            None => "—".into(),
            Some(Target::AtLeast(x)) => format!("≥ {x}x"),
            Some(Target::AtMost(x)) => format!("≤ {x}x"),
            Some(Target::Check { text, .. }) => text.clone(),
        }
    }

    fn result(&self, quick: bool) -> String {
        if self.status.is_some() {
            return "—".into();
        }
        let pass = match (&self.target, self.ratio) {
            (None, _) => return "—".into(),
            (Some(Target::Check { pass, .. }), _) => *pass,
            (Some(Target::AtLeast(x)), Some(r)) => r >= *x,
            (Some(Target::AtMost(x)), Some(r)) => r <= *x,
            (Some(_), None) => return "—".into(),
        };
        if quick {
            "not judged (--quick)".into()
        } else if pass {
            "PASS".into()
        } else {
            "**MISS**".into()
        }
    }

    fn cells(&self, quick: bool) -> [String; 7] {
        let framework = match &self.status {
            Some(s) => s.clone(),
            None => self.framework.clone(),
        };
        [
            self.what.clone(),
            self.backend.to_string(),
            framework,
            self.baseline.clone(),
            self.ratio.map(|r| format!("{r:.2}x")).unwrap_or("—".into()),
            self.target_text(),
            self.result(quick),
        ]
    }
}

/// Everything printed and written.
pub struct Report {
    pub quick: bool,
    pub command: String,
    pub header: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub errors: usize,
    /// The rows' CPU per event, each side.
    pub cpu: cpu::Table,
}

impl Report {
    pub fn push(&mut self, mut row: Row) {
        if let Some(pair) = row.cpu.take() {
            self.cpu.push(&row.what, row.backend, pair);
        }
        let c = row.cells(self.quick);
        eprintln!(
            "  {} [{}]: {} | {} | {} {}",
            c[0], c[1], c[2], c[3], c[4], c[6]
        );
        if row
            .status
            .as_deref()
            .is_some_and(|s| s.starts_with("error"))
        {
            self.errors += 1;
        }
        self.rows.push(row);
    }

    /// Pushes `row` or, when it failed, an error row named `what`.
    pub fn push_result(&mut self, backend: &'static str, what: &str, row: anyhow::Result<Row>) {
        match row {
            Ok(r) => self.push(r),
            Err(e) => {
                let mut r = Row::new(backend, what);
                r.status = Some(format!("error: {e:#}"));
                self.push(r);
            }
        }
    }

    pub fn skip(&mut self, backend: &'static str, what: &str, baseline: String, reason: &str) {
        let mut r = Row::new(backend, what).baseline(baseline);
        r.status = Some(format!("skipped: {reason}"));
        self.push(r);
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let title = if self.quick {
            "# Benchmarks (--quick: a smoke run, numbers not meaningful)"
        } else {
            "# Benchmarks"
        };
        let _ = writeln!(s, "{title}\n");
        let _ = writeln!(
            s,
            "Written by `action_event_bench`. Every row runs action_event and a hand-written \
             baseline doing the same work on the same broker in the same run; the ratio is \
             action_event ÷ baseline of the row's metric.\n"
        );
        let _ = writeln!(s, "- Command: `{}`", self.command);
        for (k, v) in &self.header {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| Row | Backend | action_event | Hand-written baseline | Ratio | Target | Result |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for row in &self.rows {
            let c = row.cells(self.quick).map(|c| c.replace('|', "\\|"));
            let _ = writeln!(s, "| {} |", c.join(" | "));
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if !self.cpu.is_empty() {
            let _ = write!(s, "\n{}", self.cpu.markdown());
        }
        s
    }
}

/// Events per second, with thousands separators.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

pub fn fmt_rate(r: f64) -> String {
    format!("{} ev/s", thousands(r.round() as u64))
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

pub fn fmt_us(d: Duration) -> String {
    format!("{:.1} µs/ev", d.as_secs_f64() * 1e6)
}

pub fn fmt_mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// The first line a command prints, or `None`.
pub fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Date, machine and versions.
pub fn header(amqp_url_reachable: bool) -> Vec<(String, String)> {
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or("unknown".into());
    let nproc = command_line("nproc", &[]).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or("?".into())
    });
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or("?".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or("?".into());
    let rustc = command_line("rustc", &["--version"]).unwrap_or("unknown".into());
    let rabbit = if amqp_url_reachable {
        command_line("timeout", &["30", "rabbitmqctl", "version"])
            .map(|v| format!("RabbitMQ {v} (`rabbitmqctl version`)"))
            .unwrap_or("RabbitMQ: version unknown (`rabbitmqctl version` not available)".into())
    } else {
        "RabbitMQ: not used in this run".into()
    };
    vec![
        ("Date".into(), date),
        (
            "Machine".into(),
            format!("{nproc} CPUs (nproc), {mem} memory, {cpu}"),
        ),
        (
            "Versions".into(),
            format!(
                "{rustc}; SQLite {} (bundled by rusqlite 0.37); {rabbit}; lapin 4.12.3; action_event {}",
                rusqlite::version(),
                env!("CARGO_PKG_VERSION")
            ),
        ),
    ]
}

/// The scale rows' target: the last size's per-event cost `fw` within 1.5x
/// of the first size's (remembered in `first`, set by the row `idx == 0`).
pub fn scale_target(
    sizes: &[u64],
    idx: usize,
    first: &mut Option<Duration>,
    fw: Duration,
    row: Row,
) -> Row {
    match *first {
        None => {
            *first = Some(fw);
            row
        }
        Some(base) if idx + 1 == sizes.len() => {
            let growth = fw.as_secs_f64() / base.as_secs_f64();
            row.target(Target::Check {
                text: format!("≤ 1.5x the {} row: {growth:.2}x", thousands(sizes[0])),
                pass: growth <= 1.5,
            })
        }
        Some(_) => row,
    }
}
