//! Phase 9 of `cluster_e2e`: bursts of delayed events into delay levels
//! that do not exist yet, from many connections on every node at once, all
//! come back to their work queue on time.
//!
//! RabbitMQ 3.10.8 applies a new quorum queue's `x-message-ttl` through a
//! Raft command of its own, after the queue was created; on a cluster,
//! messages that reach the queue before it applied never expire, and a
//! quorum queue expires only from its head, so nothing behind them does
//! either (found in phase 7, whose retries declare `delay.1000` and
//! `delay.2000` from many channels at once: about 1 run in 9 kept them
//! ready for good). The backend sets every delayed message's own
//! `expiration` to its level's TTL (`amqp/wire.rs`,
//! `expiring_properties`). Measured with that turned off: 3 runs of 3
//! failed in their first round, 2-3 of the 5 new levels keeping all 48 of
//! their events ready 12 s later; with it, 14 rounds of 14 passed (70 new
//! levels, every event back 2.4-2.8 s after the burst started).

use std::time::{Duration, Instant};

use crate::cluster_e2e::{on_node, prefix_of, world};
use action_event::{Client, QueueRequest};
use action_event_test_support::rabbit_cluster::RabbitCluster;

/// Connections sending at once, spread over the nodes.
const CLIENTS: usize = 16;
/// Events each connection sends to each level.
const EACH: usize = 3;
/// The levels used (each new in every round: a round has its own prefix).
const LEVELS_MS: [u64; 5] = [100, 200, 500, 1_000, 2_000];
const ROUNDS: usize = 4;

/// The phase: `ROUNDS` rounds of `CLIENTS` x `EACH` events into each of
/// `LEVELS_MS`, every one back in the work queue within 10 s of the longest
/// delay.
pub(crate) fn bursts_into_new_delay_levels(cluster: &mut RabbitCluster) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let want = (CLIENTS * EACH * LEVELS_MS.len()) as u64;
    for round in 0..ROUNDS {
        let w = world(cluster, round % cluster.len(), "");
        let prefix = prefix_of(&w);
        let urls: Vec<String> = (0..CLIENTS)
            .map(|i| on_node(cluster, &w, i % cluster.len()))
            .collect();
        let outcome = rt.block_on(async {
            let mut clients = Vec::new();
            for url in &urls {
                clients.push(Client::connect(url).await.expect("connect"));
            }
            // Every client sends to every level at the same moment: each
            // declares the level on its own channel, then publishes.
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for c in &clients {
                for &l in &LEVELS_MS {
                    let c = c.clone();
                    set.spawn(async move {
                        for k in 0..EACH {
                            let req = QueueRequest::foreign("record")
                                .param("tag", format!("burst-{l}-{k}"))
                                .queue("medium")
                                .delay(Duration::from_millis(l));
                            c.send(req).await.expect("queue a delayed event");
                        }
                    });
                }
            }
            while let Some(r) = set.join_next().await {
                r.expect("sender");
            }
            let sent = t.elapsed();
            let limit =
                Duration::from_millis(LEVELS_MS[LEVELS_MS.len() - 1]) + Duration::from_secs(10);
            let mut back = 0;
            while t.elapsed() < limit {
                back = clients[0]
                    .broker()
                    .depth("medium")
                    .await
                    .expect("depth")
                    .waiting;
                if back >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (sent, back, t.elapsed())
        });
        let (sent, back, took) = outcome;
        eprintln!(
            "round {round}: {want} delayed events sent from {CLIENTS} connections in {sent:?}; {back} back in the work queue after {took:?}"
        );
        assert_eq!(
            back,
            want,
            "delayed events stuck in their delay levels (RabbitMQ 3.10.8 stores messages that reach a new quorum queue before its TTL applied without expiry):\n{}",
            cluster.queue_table(&prefix)
        );
    }
}
