//! The current client: an app that runs `Poller::new(broker, ..)` itself
//! gets every follow-up event its handlers queue (`queue!`, `cx.queue`, the
//! typed `.queue()`) on the poller's broker, not on the process's global
//! client. Real SQLite files: the poller's, and a global one that must stay
//! empty.

use std::sync::Mutex;
use std::time::Duration;

use action_event::poller::{Poller, PollerConfig, Shutdown};
use action_event::prelude::*;
use action_event::{Client, QueueRequest};

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "high")]
pub struct OrderPlacedEvent {
    pub id: u32,
}

impl Process for OrderPlacedEvent {
    async fn process(self, cx: &Context) -> Result<()> {
        queue!(send_receipt, id = self.id, via = "macro").await?;
        cx.queue(
            "send_receipt",
            serde_json::json!({"id": self.id, "via": "context"}),
        )
        .await?;
        SendReceiptEvent {
            id: self.id,
            via: "typed".into(),
        }
        .queue()
        .await?;
        Ok(())
    }
}

static RECEIPTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Debug, Serialize, Deserialize)]
#[action_event(queue = "low")]
pub struct SendReceiptEvent {
    pub id: u32,
    pub via: String,
}

impl Process for SendReceiptEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        RECEIPTS
            .lock()
            .unwrap()
            .push(format!("{} {}", self.id, self.via));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_in_a_handler_goes_to_the_pollers_broker_not_the_global_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let global_url = format!("sqlite://{}", dir.path().join("global.db").display());
    let poller_url = format!("sqlite://{}", dir.path().join("poller.db").display());
    // The process's global client is another file: what reaches it is lost
    // to this poller.
    Client::connect(&global_url)
        .await
        .expect("global client")
        .set_global();

    let broker = action_event::broker::connect(&poller_url)
        .await
        .expect("poller broker");
    Client::from_broker(broker.clone())
        .send(QueueRequest::new("order_placed").param("id", 7))
        .await
        .expect("queue order_placed");

    let config = PollerConfig {
        queues: vec!["high".into(), "low".into()],
        exit_when_empty: true,
        idle_wait: Duration::from_millis(50),
        ..PollerConfig::default()
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        Poller::new(broker.clone(), State::new(), config)
            .expect("poller")
            .run(Shutdown::new()),
    )
    .await
    .expect("the poller drains in time")
    .expect("the poller runs");

    let mut receipts = RECEIPTS.lock().unwrap().clone();
    receipts.sort();
    assert_eq!(receipts, ["7 context", "7 macro", "7 typed"]);
    assert_eq!(summary.completed, 4, "{summary:?}");
    assert_eq!((summary.retried, summary.dead), (0, 0), "{summary:?}");

    let global = action_event::broker::connect(&global_url)
        .await
        .expect("global broker");
    for queue in ["high", "medium", "low"] {
        let depth = global.depth(queue).await.expect("depth");
        assert_eq!(
            (depth.waiting, depth.scheduled),
            (0, Some(0)),
            "queue `{queue}` of the global client got an event: {depth:?}"
        );
    }
}
