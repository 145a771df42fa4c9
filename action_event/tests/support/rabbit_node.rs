//! A private RabbitMQ node for tests that restart the broker, cut its
//! connections or change its configuration, so they never disturb the shared
//! broker on 5672 (nor each other).
//!
//! Each [`RabbitNode`] runs Debian's `rabbitmq-server` (as the current user,
//! from `/usr/lib/rabbitmq/bin`, or `$RABBITMQ_BIN`) with its own node name,
//! AMQP and distribution ports, data, log and config in a temporary
//! directory, and `rabbitmq.conf` lines of the test's choosing. Booting takes
//! about 10 s. Dropping it stops the node and removes the directory.
//!
//! Included with `#[path = "support/rabbit_node.rs"] mod rabbit_node;` by
//! `action_event`'s tests and by the root package's tests (needs `tempfile`).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running private node. See the module docs.
pub struct RabbitNode {
    dir: tempfile::TempDir,
    name: String,
    port: u16,
    child: Option<Child>,
}

fn bin(tool: &str) -> PathBuf {
    let dir = std::env::var("RABBITMQ_BIN").unwrap_or_else(|_| "/usr/lib/rabbitmq/bin".into());
    Path::new(&dir).join(tool)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Whether a private node can be started here (the server is installed).
pub fn available() -> bool {
    bin("rabbitmq-server").exists()
}

impl RabbitNode {
    /// Starts a node whose `rabbitmq.conf` also holds `conf` (lines such as
    /// `consumer_timeout = 5000`) and waits until it accepts connections.
    /// Panics with the node's output when it does not come up in 60 s.
    pub fn start(conf: &str) -> RabbitNode {
        assert!(
            available(),
            "rabbitmq-server is not installed at {} (set RABBITMQ_BIN)",
            bin("rabbitmq-server").display()
        );
        let dir = tempfile::Builder::new()
            .prefix("ae-rabbit-")
            .tempdir()
            .expect("a temp dir");
        let port = free_port();
        let dist = free_port();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "aetest{}x{}x{}@localhost",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            port
        );
        let p = dir.path();
        std::fs::write(
            p.join("rabbitmq.conf"),
            format!("listeners.tcp.default = {port}\nloopback_users = none\n{conf}\n"),
        )
        .expect("write rabbitmq.conf");
        std::fs::write(p.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        let log = std::fs::File::create(p.join("server.out")).expect("server.out");
        let err = log.try_clone().expect("server.out");
        let mut node = RabbitNode {
            name,
            port,
            child: None,
            dir,
        };
        let child = node
            .command("rabbitmq-server")
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start rabbitmq-server");
        node.child = Some(child);
        let started = Instant::now();
        loop {
            if node.accepts() {
                // The port opens before the boot finishes: wait for it.
                let out = node.ctl(&["await_startup"]);
                if out.status.success() {
                    return node;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "private RabbitMQ node {} did not start in 60 s:\n{}",
                    node.name,
                    std::fs::read_to_string(node.dir.path().join("server.out")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn command(&self, tool: &str) -> Command {
        let p = self.dir.path();
        let mut c = Command::new(bin(tool));
        c.env("HOME", p)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_MNESIA_BASE", p.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", p.join("log"))
            .env("RABBITMQ_CONFIG_FILE", p.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", p.join("pid"));
        c
    }

    /// Whether the AMQP port accepts TCP connections.
    pub fn accepts(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`, no query.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl -n <node> args...` and returns its output.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.command("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .arg("-q")
            .args(args)
            .output()
            .expect("run rabbitmqctl")
    }

    /// Like [`RabbitNode::ctl`], panicking when it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Closes every client connection (the broker stays up).
    pub fn close_all_connections(&self) {
        self.ctl_ok(&["close_all_connections", "test: connection cut"]);
    }

    /// Stops the RabbitMQ application (the port closes; the node stays).
    pub fn stop_app(&self) {
        self.ctl_ok(&["stop_app"]);
    }

    /// Starts the application again and waits until it is up.
    pub fn start_app(&self) {
        self.ctl_ok(&["start_app"]);
        self.ctl_ok(&["await_startup"]);
    }

    /// Ready messages in `queue` (full name), or `None` if it does not exist.
    pub fn ready(&self, queue: &str) -> Option<u64> {
        let out = self.ctl_ok(&[
            "list_queues",
            "name",
            "messages_ready",
            "--no-table-headers",
        ]);
        out.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(queue)).then(|| it.next().and_then(|n| n.parse().ok()))?
        })
    }

    /// The node's log so far (for assertion messages).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("log")) {
            for e in rd.flatten() {
                s.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        s
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
