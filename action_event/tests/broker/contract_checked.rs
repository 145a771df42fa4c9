//! The contract of `Broker::publish_checked` (what `queue_many` uses),
//! run on every backend by `contract_suite!` in `contract.rs`: a batch
//! larger than one chunk is stored whole and in order, and a bad envelope
//! anywhere in it (here past the first chunks, where SQLite has already
//! written rows in its open transaction) stores none of the batch.

use action_event::broker::Broker;
use action_event::{Envelope, Error};
use serde_json::json;

use crate::test_support::*;

/// How long a take waits for an event that is ready.
const SOON: std::time::Duration = std::time::Duration::from_secs(5);

/// Past SQLite's first chunks (256 rows each), so rows are in its open
/// transaction when the bad envelope comes.
const BATCH: usize = 1_000;

pub(crate) async fn publish_checked_stores_a_large_batch_in_order<F: Backend>(f: F) {
    let b = f.open().await;
    let batch: Vec<Envelope> = (0..BATCH)
        .map(|i| Envelope::new("e", "low", json!({ "i": i })))
        .collect();
    let mut items = batch.clone().into_iter().map(Ok);
    let ids = b
        .publish_checked(&mut items)
        .await
        .expect("publish_checked");
    assert_eq!(
        ids,
        batch.iter().map(|e| e.id).collect::<Vec<_>>(),
        "ids in order"
    );
    assert_eq!(b.depth("low").await.expect("depth").waiting, BATCH as u64);
    for want in &batch {
        let d = b
            .take(&qs(&["low"]), SOON)
            .await
            .expect("take")
            .expect("every event of the batch");
        assert_eq!(&env_of(&d), want, "order");
        b.ack(&d).await.expect("ack");
    }
    f.clean(&b).await;
}

pub(crate) async fn publish_checked_stores_nothing_after_a_bad_envelope<F: Backend>(f: F) {
    let b = f.open().await;
    let bad_at = 700;
    let mut items = (0..BATCH).map(|i| {
        if i == bad_at {
            Err(Error::Params {
                event: "e".into(),
                path: "i".into(),
                message: format!("bad request number {i}"),
            })
        } else {
            Ok(Envelope::new("e", "low", json!({ "i": i })))
        }
    });
    let err = b
        .publish_checked(&mut items)
        .await
        .expect_err("a bad envelope fails the batch");
    assert!(err.to_string().contains("bad request number 700"), "{err}");
    assert_eq!(
        b.depth("low").await.expect("depth").waiting,
        0,
        "nothing of a failed batch is stored"
    );
    // The broker works on after the rolled-back batch.
    let mut items = (0..300).map(|i| Ok(Envelope::new("e", "low", json!({ "i": i }))));
    b.publish_checked(&mut items).await.expect("next batch");
    assert_eq!(b.depth("low").await.expect("depth").waiting, 300);
    f.clean(&b).await;
}
