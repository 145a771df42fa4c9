//! A private 3-node RabbitMQ cluster on this machine, for tests of quorum
//! queues and node failover.
//!
//! Three [`RabbitNode`]s booted at once (about 10-20 s), each with its own
//! node name, AMQP and distribution ports and data directory, and one
//! shared Erlang cookie; the second and third then `join_cluster` the first.
//! Any node can be killed (`kill -9` of its VM), stopped and restarted; a
//! restarted node rejoins the cluster by itself. Dropping the cluster kills
//! every VM, all at once (never leaves one running), and removes the
//! directories. [`RabbitCluster::start_with_management`] also runs the
//! management plugin on every node ([`RabbitCluster::management_urls`]).
//!
//! ```no_run
//! use action_event_test_support::rabbit_cluster::RabbitCluster;
//! let mut cluster = RabbitCluster::start(3, "");
//! let url = cluster.url("queue_type=quorum");   // amqp://guest:guest@127.0.0.1:p1,...
//! cluster.node_mut(0).kill_vm();
//! cluster.node_mut(0).restart_vm();
//! ```

use std::time::{Duration, Instant};

use crate::rabbit_node::RabbitNode;

/// A running private cluster. See the module docs.
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Boots `n` nodes whose `rabbitmq.conf` also holds `conf`, clusters
    /// them and waits until every node sees all `n` running. Panics with
    /// the nodes' output when that fails.
    pub fn start(n: usize, conf: &str) -> RabbitCluster {
        RabbitCluster::boot(n, conf, false)
    }

    /// Like [`RabbitCluster::start`], plus the `rabbitmq_management` plugin
    /// on every node, each on a free port of its own on 127.0.0.1
    /// ([`RabbitCluster::management_urls`]); returns once every node's API
    /// port is open. Costs ~7 s of boot (2 busy cores).
    ///
    /// ```no_run
    /// use action_event_test_support::rabbit_cluster::RabbitCluster;
    /// let cluster = RabbitCluster::start_with_management(3, "");
    /// let url = cluster.url(&format!("queue_type=quorum&management={}", cluster.management_urls()));
    /// ```
    pub fn start_with_management(n: usize, conf: &str) -> RabbitCluster {
        RabbitCluster::boot(n, conf, true)
    }

    fn boot(n: usize, conf: &str, management: bool) -> RabbitCluster {
        assert!(n >= 1, "a cluster of at least one node");
        let cookie = format!(
            "AETESTCOOKIE{}X{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let nodes: Vec<RabbitNode> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let cookie = cookie.as_str();
                    s.spawn(move || {
                        if management {
                            RabbitNode::boot_management(conf, Some(cookie), false)
                        } else {
                            RabbitNode::boot_with(conf, false, Some(cookie))
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a node booted"))
                .collect()
        });
        let seed = nodes[0].name().to_string();
        for node in &nodes[1..] {
            node.ctl_ok(&["stop_app"]);
            node.ctl_ok(&["join_cluster", &seed]);
            node.ctl_ok(&["start_app"]);
            node.ctl_ok(&["await_startup"]);
        }
        let cluster = RabbitCluster { nodes };
        cluster.wait_running(n);
        if management {
            // Once joined: `join_cluster`'s stop_app/start_app would
            // restart the plugin (measured on 2 busy cores: +10 s of boot
            // against no plugin when enabled at boot, +2-12 s, ~7 s on
            // average, this way).
            std::thread::scope(|s| {
                for node in &cluster.nodes {
                    s.spawn(move || {
                        node.enable_management();
                        node.wait_management();
                    });
                }
            });
        }
        cluster
    }

    /// Waits (at most 60 s) until the first live node reports `n` running
    /// nodes in its cluster.
    pub fn wait_running(&self, n: usize) {
        let since = Instant::now();
        loop {
            if let Some(node) = self.nodes.iter().find(|x| x.accepts()) {
                let out = node.ctl(&["cluster_status", "--formatter", "json"]);
                let text = String::from_utf8_lossy(&out.stdout);
                let running = text
                    .split("\"running_nodes\":[")
                    .nth(1)
                    .and_then(|r| r.split(']').next())
                    .map_or(0, |list| list.matches('@').count());
                if out.status.success() && running >= n {
                    return;
                }
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "the cluster did not reach {n} running nodes in 60 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The node at `i` (0-based).
    pub fn node(&self, i: usize) -> &RabbitNode {
        &self.nodes[i]
    }

    /// The node at `i`, to kill, stop or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut RabbitNode {
        &mut self.nodes[i]
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// [`RabbitNode::set_rabbit_env`] on every node (running ones at once,
    /// stopped ones at their next start; all keep them across restarts).
    ///
    /// ```no_run
    /// use action_event_test_support::rabbit_cluster::RabbitCluster;
    /// let mut cluster = RabbitCluster::start(3, "");
    /// cluster.set_rabbit_env(&[("consumer_timeout", "3000")]);
    /// ```
    pub fn set_rabbit_env(&mut self, entries: &[(&str, &str)]) {
        for node in &mut self.nodes {
            node.set_rabbit_env(entries);
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<p1>,127.0.0.1:<p2>,.../%2f?<query>`:
    /// every node, in order.
    pub fn url(&self, query: &str) -> String {
        self.url_from(0, query)
    }

    /// Like [`RabbitCluster::url`], with node `first` listed first (a
    /// client connects to the first live one).
    pub fn url_from(&self, first: usize, query: &str) -> String {
        let n = self.nodes.len();
        let hosts: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", self.nodes[(first + i) % n].port()))
            .collect();
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("amqp://guest:guest@{}/%2f{q}", hosts.join(","))
    }

    /// The management API of every node, in order, comma-separated
    /// (`http://127.0.0.1:<m1>,http://127.0.0.1:<m2>,...`): the value of
    /// the `management` URL option, which tries them in turn, so a dead
    /// node's is skipped. Panics unless the cluster was started with
    /// [`RabbitCluster::start_with_management`].
    pub fn management_urls(&self) -> String {
        self.nodes
            .iter()
            .map(RabbitNode::management_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every queue whose name starts with `prefix`, with the index of the
    /// node leading it (`None`: a classic queue, or no leader known), asked
    /// of the first live node.
    pub fn leaders(&self, prefix: &str) -> Vec<(String, Option<usize>)> {
        let Some(node) = self.nodes.iter().find(|x| x.accepts()) else {
            return Vec::new();
        };
        let out = node.ctl(&["list_queues", "name", "leader", "--no-table-headers"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next()?;
                name.starts_with(prefix).then(|| {
                    let leader = it
                        .next()
                        .and_then(|ld| self.nodes.iter().position(|x| x.name() == ld));
                    (name.to_string(), leader)
                })
            })
            .collect()
    }

    /// The index of the node that leads quorum queue `queue` (full name),
    /// asked of any live node; `None` if no live node knows one.
    pub fn leader_of(&self, queue: &str) -> Option<usize> {
        for node in self.nodes.iter().filter(|x| x.accepts()) {
            let out = node.ctl(&["list_queues", "name", "leader", "--no-table-headers"]);
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let leader = text.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(queue)).then(|| it.next().map(str::to_string))?
            });
            if let Some(leader) = leader {
                return self.nodes.iter().position(|x| x.name() == leader);
            }
        }
        None
    }

    /// `rabbitmqctl list_queues` of every queue whose name starts with
    /// `prefix` (name, type, leader, messages, ready, unacked, consumers),
    /// asked of the first live node: for assertion messages.
    pub fn queue_table(&self, prefix: &str) -> String {
        let Some(node) = self.nodes.iter().find(|x| x.accepts()) else {
            return "(no live node)".into();
        };
        let out = node.ctl(&[
            "list_queues",
            "name",
            "type",
            "leader",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "--no-table-headers",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Moves the leadership of quorum queue `queue` (full name, vhost `/`)
    /// from node `from` to node `to` (both running), with Ra's
    /// `transfer_leadership`: what an operator does to restart a queue's
    /// dead-letter worker. Returns what Ra answered (`ok`, or why not).
    ///
    /// ```no_run
    /// use action_event_test_support::rabbit_cluster::RabbitCluster;
    /// let cluster = RabbitCluster::start(3, "");
    /// let answer = cluster.transfer_leadership("app.delay.1000", 0, 1);
    /// ```
    pub fn transfer_leadership(&self, queue: &str, from: usize, to: usize) -> String {
        let ra = format!("'%2F_{}'", queue.replace('\'', "\\'"));
        let expr = format!(
            "ra:transfer_leadership({{{ra}, '{}'}}, {{{ra}, '{}'}}).",
            self.nodes[from].name(),
            self.nodes[to].name()
        );
        let out = self.nodes[from].ctl(&["eval", &expr]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }

    /// Messages (ready + unacked) in `queue` (full name), asked of any live node.
    pub fn messages(&self, queue: &str) -> Option<u64> {
        let node = self.nodes.iter().find(|x| x.accepts())?;
        let out = node.ctl(&["list_queues", "name", "messages", "--no-table-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(queue)).then(|| it.next().and_then(|n| n.parse().ok()))?
        })
    }
}

impl Drop for RabbitCluster {
    /// Kills every node's VM (`kill -9`: its data is thrown away, an
    /// orderly stop only costs time, 2-7 s per node), all at once, one
    /// thread each, then drops them (which removes their directories).
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .into_iter()
                .map(|mut node| {
                    s.spawn(move || {
                        if node.vm_pid().is_some() {
                            node.kill_vm();
                        }
                        drop(node)
                    })
                })
                .collect();
            // Joined here, so a node's failing stop cannot panic the scope
            // (a second panic while a failed test unwinds would abort).
            for h in handles {
                let _ = h.join();
            }
        });
    }
}
