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
//! [`RabbitNode::start_tls`] also opens a TLS listener whose certificate (for
//! `localhost` and `127.0.0.1`) is signed by a throwaway CA made at start with
//! the `openssl` CLI ([`TlsFiles`]); clients trust it only when told to.
//!
//! Used by `action_event`'s tests and by the root package's tests, as
//! `action_event_test_support::rabbit_node`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running private node. See the module docs.
pub struct RabbitNode {
    dir: tempfile::TempDir,
    name: String,
    port: u16,
    /// The Erlang distribution port (kept across restarts).
    dist: u16,
    tls: Option<(u16, TlsFiles)>,
    child: Option<Child>,
    /// `rabbit` application keys kept in `advanced.config` ([`RabbitNode::set_rabbit_env`]).
    env: Vec<(String, String)>,
    /// The management API's HTTP port ([`RabbitNode::start_with_management`] only).
    management: Option<u16>,
}

/// A throwaway CA and a server certificate it signed, as PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA certificate: what a client must trust.
    pub ca: PathBuf,
    /// The server certificate (`CN=localhost`, SAN `DNS:localhost`, `IP:127.0.0.1`).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

/// Makes a CA and a server certificate for `localhost`/`127.0.0.1` in `dir`
/// with `/usr/bin/openssl` (or `$OPENSSL`); P-256 keys, valid two days.
/// Panics with openssl's output when it fails.
pub fn make_tls_files(dir: &Path) -> TlsFiles {
    std::fs::create_dir_all(dir).expect("tls dir");
    let openssl = std::env::var("OPENSSL").unwrap_or_else(|_| "/usr/bin/openssl".into());
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=action_event test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req", "-new", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

fn bin(tool: &str) -> PathBuf {
    let dir = std::env::var("RABBITMQ_BIN").unwrap_or_else(|_| "/usr/lib/rabbitmq/bin".into());
    Path::new(&dir).join(tool)
}

/// A local TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Whether a private node can be started here (the server is installed).
pub fn available() -> bool {
    bin("rabbitmq-server").exists()
}

/// [`available`], or else: a panic when `ACTION_EVENT_REQUIRE_AMQP=1`, and
/// otherwise a loud `SKIPPED` line (straight to stderr, which the test
/// harness does not capture) and `false`, so the calling test returns.
pub fn available_or_skip() -> bool {
    if available() {
        return true;
    }
    if std::env::var("ACTION_EVENT_REQUIRE_AMQP").as_deref() == Ok("1") {
        panic!("rabbitmq-server is not installed but ACTION_EVENT_REQUIRE_AMQP=1");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: no RabbitMQ: rabbitmq-server is not installed, no private node ***\n"
    );
    false
}

impl RabbitNode {
    /// Starts a node whose `rabbitmq.conf` also holds `conf` (lines such as
    /// `consumer_timeout = 5000`) and waits until it accepts connections.
    /// Panics with the node's output when it does not come up in 60 s.
    pub fn start(conf: &str) -> RabbitNode {
        RabbitNode::boot(conf, false)
    }

    /// Like [`RabbitNode::start`], plus a TLS listener ([`RabbitNode::tls_port`])
    /// with a certificate signed by a throwaway CA ([`RabbitNode::tls_files`]).
    /// No client certificate is asked for.
    pub fn start_tls(conf: &str) -> RabbitNode {
        RabbitNode::boot(conf, true)
    }

    /// Like [`RabbitNode::start`], plus the `rabbitmq_management` plugin on
    /// its own free port on 127.0.0.1 ([`RabbitNode::management_url`]);
    /// returns once the API answers.
    ///
    /// ```no_run
    /// use action_event_test_support::rabbit_node::RabbitNode;
    /// let node = RabbitNode::start_with_management("");
    /// println!("{}", node.management_url());
    /// ```
    pub fn start_with_management(conf: &str) -> RabbitNode {
        let node = RabbitNode::boot_management(conf, None, true);
        node.wait_management();
        node
    }

    /// Boots a node configured for the management plugin on a free port
    /// of its own, the plugin enabled at boot if `enabled`, else later by
    /// [`RabbitNode::enable_management`] (a cluster enables it once its
    /// nodes joined: `join_cluster` restarts the app, and the plugin with
    /// it). Does not wait for the API ([`RabbitNode::wait_management`]).
    pub(crate) fn boot_management(conf: &str, cookie: Option<&str>, enabled: bool) -> RabbitNode {
        let port = free_port();
        let conf = format!("management.tcp.port = {port}\nmanagement.tcp.ip = 127.0.0.1\n{conf}");
        RabbitNode::boot_full(&conf, false, cookie, Some(port), enabled)
    }

    /// Enables (and starts) the management plugin on the running node,
    /// which keeps it across restarts. Panics with the tool's output when
    /// that fails.
    pub(crate) fn enable_management(&self) {
        let out = self
            .command("rabbitmq-plugins")
            .args(["-n", &self.name, "-q", "enable", "rabbitmq_management"])
            .output()
            .expect("run rabbitmq-plugins");
        assert!(
            out.status.success(),
            "rabbitmq-plugins enable rabbitmq_management on {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits (at most 60 s) until the management API's port accepts
    /// connections (a node without the plugin returns at once).
    pub(crate) fn wait_management(&self) {
        let Some(port) = self.management else { return };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the management API of {} did not open port {port} in 60 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `http://127.0.0.1:<port>` of the management API
    /// ([`RabbitNode::start_with_management`], or a node of
    /// [`RabbitCluster::start_with_management`](crate::rabbit_cluster::RabbitCluster::start_with_management),
    /// only; panics otherwise).
    pub fn management_url(&self) -> String {
        let port = self
            .management
            .expect("a node started with start_with_management");
        format!("http://127.0.0.1:{port}")
    }

    fn boot(conf: &str, tls: bool) -> RabbitNode {
        RabbitNode::boot_with(conf, tls, None)
    }

    /// Boots a node; with `cookie`, its Erlang cookie is that (the nodes of
    /// a cluster share one) instead of a fresh random one.
    pub(crate) fn boot_with(conf: &str, tls: bool, cookie: Option<&str>) -> RabbitNode {
        RabbitNode::boot_full(conf, tls, cookie, None, false)
    }

    /// [`RabbitNode::boot_with`]; `management` is the management API's
    /// port (already in `conf`), and the plugin is enabled at boot if
    /// `plugin`.
    fn boot_full(
        conf: &str,
        tls: bool,
        cookie: Option<&str>,
        management: Option<u16>,
        plugin: bool,
    ) -> RabbitNode {
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
        let tls = tls.then(|| (free_port(), make_tls_files(&p.join("tls"))));
        let tls_conf = match &tls {
            Some((tls_port, f)) => format!(
                "listeners.ssl.default = {tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                f.ca.display(),
                f.cert.display(),
                f.key.display()
            ),
            None => String::new(),
        };
        std::fs::write(
            p.join("rabbitmq.conf"),
            format!("listeners.tcp.default = {port}\nloopback_users = none\n{tls_conf}{conf}\n"),
        )
        .expect("write rabbitmq.conf");
        let plugins = if plugin {
            "[rabbitmq_management].\n"
        } else {
            "[].\n"
        };
        std::fs::write(p.join("enabled_plugins"), plugins).expect("write enabled_plugins");
        std::fs::write(p.join("advanced.config"), "[].\n").expect("write advanced.config");
        if let Some(cookie) = cookie {
            write_cookie(p, cookie);
        }
        let mut node = RabbitNode {
            name,
            port,
            dist,
            tls,
            child: None,
            env: Vec::new(),
            management,
            dir,
        };
        node.spawn_and_wait();
        node
    }

    /// Starts the VM (again: same node name, ports and data) and waits until
    /// it accepts connections and has booted.
    fn spawn_and_wait(&mut self) {
        let p = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("server.out"))
            .expect("server.out");
        let err = log.try_clone().expect("server.out");
        let child = self
            .command("rabbitmq-server")
            .env("RABBITMQ_DIST_PORT", self.dist.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        let node = self;
        let started = Instant::now();
        loop {
            let tls_up = node.tls.as_ref().is_none_or(|(tls_port, _)| {
                std::net::TcpStream::connect(("127.0.0.1", *tls_port)).is_ok()
            });
            if node.accepts() && tls_up {
                // The port opens before the boot finishes: wait for it.
                let out = node.ctl(&["await_startup"]);
                if out.status.success() {
                    return;
                }
            }
            if started.elapsed() > Duration::from_secs(120) {
                panic!(
                    "private RabbitMQ node {} did not start in 120 s:\n{}",
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
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", p.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", p.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", p.join("pid"));
        c
    }

    /// The Erlang node name (`aetest...@localhost`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the node's Erlang VM (`beam.smp`), found in `/proc` by
    /// its `-home` argument: the node's own temporary directory (RabbitMQ
    /// 3.10 does not put the node name on the command line).
    pub fn vm_pid(&self) -> Option<u32> {
        let home = self.dir.path().as_os_str().as_encoded_bytes();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_beam = args
                .first()
                .is_some_and(|a| a.ends_with(b"beam.smp") || a.ends_with(b"beam"));
            let ours = args.windows(2).any(|w| w[0] == b"-home" && w[1] == home);
            if is_beam && ours {
                return Some(pid);
            }
        }
        None
    }

    /// `kill -9` of the node's Erlang VM (no shutdown of any kind: its
    /// connections drop, its disk stays as it was), then waits (at most
    /// 30 s) until it is gone and the AMQP port refuses connections.
    pub fn kill_vm(&mut self) {
        let pid = self.vm_pid().expect("the node's beam.smp process");
        let out = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .output()
            .expect("run kill");
        assert!(out.status.success(), "kill -9 {pid}: {out:?}");
        let since = Instant::now();
        while self.vm_pid().is_some() || self.accepts() {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "VM {pid} still there"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node's VM the orderly way (`rabbitmqctl stop`) and waits
    /// until it is gone.
    pub fn stop_vm(&mut self) {
        let _ = self.ctl(&["stop"]);
        let since = Instant::now();
        while self.vm_pid().is_some() || self.accepts() {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "VM of {} still there",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the VM again after [`RabbitNode::kill_vm`] or
    /// [`RabbitNode::stop_vm`] (same name, ports and data: a cluster member
    /// rejoins its cluster) and waits until it has booted.
    pub fn restart_vm(&mut self) {
        assert!(self.vm_pid().is_none(), "{} is still running", self.name);
        self.spawn_and_wait();
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

    /// The TLS port ([`RabbitNode::start_tls`] only).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|(port, _)| *port)
    }

    /// The CA and server certificate files ([`RabbitNode::start_tls`] only).
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|(_, f)| f)
    }

    /// `amqps://guest:guest@localhost:<tls port>/%2f`, no query
    /// ([`RabbitNode::start_tls`] only; panics otherwise).
    pub fn amqps_url(&self) -> String {
        let port = self.tls_port().expect("a node started with start_tls");
        format!("amqps://guest:guest@localhost:{port}/%2f")
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

    /// Sets keys of the `rabbit` application on the running VM (`value`s are
    /// Erlang terms, e.g. `("consumer_timeout", "3000")`), and keeps them in
    /// the node's `advanced.config`, so they hold again after
    /// [`RabbitNode::restart_vm`]. Channels opened from now on see them:
    /// `consumer_timeout`, and `channel_tick_interval` (how often a channel
    /// checks it; not a `rabbitmq.conf` key) are read when a channel opens.
    /// A node that is down gets them at its next start. Later calls add to
    /// (or replace) earlier keys.
    ///
    /// ```no_run
    /// use action_event_test_support::rabbit_node::RabbitNode;
    /// let mut node = RabbitNode::start("");
    /// node.set_rabbit_env(&[("consumer_timeout", "3000"), ("channel_tick_interval", "500")]);
    /// ```
    pub fn set_rabbit_env(&mut self, entries: &[(&str, &str)]) {
        for (k, v) in entries {
            self.env.retain(|(key, _)| key != k);
            self.env.push((k.to_string(), v.to_string()));
        }
        let terms: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{{{k}, {v}}}"))
            .collect();
        std::fs::write(
            self.dir.path().join("advanced.config"),
            format!("[{{rabbit, [{}]}}].\n", terms.join(", ")),
        )
        .expect("write advanced.config");
        if self.vm_pid().is_some() {
            for (k, v) in entries {
                self.ctl_ok(&["eval", &format!("application:set_env(rabbit, {k}, {v}).")]);
            }
        }
    }

    /// The running node's value of a `rabbit` application key, as Erlang
    /// prints it (`{ok,3000}`, or `undefined`).
    pub fn rabbit_env(&self, key: &str) -> String {
        self.ctl_ok(&["eval", &format!("application:get_env(rabbit, {key}).")])
            .trim()
            .to_string()
    }

    /// Closes every client connection (the broker stays up).
    pub fn close_all_connections(&self) {
        self.ctl_ok(&["close_all_connections", "test: connection cut"]);
    }

    /// Stops the RabbitMQ application (the port closes; the node stays).
    pub fn stop_app(&self) {
        self.ctl_ok(&["stop_app"]);
    }

    /// [`RabbitNode::stop_app`], then waits (at most 30 s) until the AMQP
    /// port refuses connections.
    pub fn stop_app_until_closed(&self) {
        self.stop_app();
        let down = std::time::Instant::now();
        while self.accepts() {
            assert!(
                down.elapsed() < std::time::Duration::from_secs(30),
                "port never closed"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
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

/// Writes the Erlang cookie into `home` (the node's and its CLI tools'
/// `$HOME`), readable by its owner only, as Erlang demands.
fn write_cookie(home: &Path, cookie: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = home.join(".erlang.cookie");
    std::fs::write(&path, cookie).expect("write .erlang.cookie");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
        .expect("chmod .erlang.cookie");
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if self.child.is_none() && self.vm_pid().is_none() {
            return;
        }
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
        // Never leave a VM behind (the script above may not be its parent).
        if let Some(pid) = self.vm_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
    }
}
