//! `Error::is_transient` on real brokers: a RabbitMQ that cannot be reached
//! is worth waiting for (the poller's command line waits); a bad URL or an
//! SQLite file that cannot be opened is not (it fails at once).

use std::error::Error as _;

use action_event::broker;

#[tokio::test]
async fn a_broker_that_cannot_be_reached_is_transient() {
    // Port 1 on the loopback: refused at once.
    let err = broker::connect("amqp://guest:guest@127.0.0.1:1/%2f")
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.source().is_some(), "the cause is kept: {err:?}");
    assert!(!err.to_string().contains("guest:guest"), "{err}");
}

#[tokio::test]
async fn a_bad_url_or_an_unopenable_file_is_not_transient() {
    let err = broker::connect("amqp://127.0.0.1:notaport/%2f")
        .await
        .err()
        .expect("a bad port");
    assert!(!err.is_transient(), "{err:?}");
    let err = broker::connect("nosuch://x")
        .await
        .err()
        .expect("a bad scheme");
    assert!(!err.is_transient(), "{err:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the database file should be.
    let url = format!("sqlite://{}", dir.path().display());
    let err = broker::connect(&url).await.err().expect("a directory");
    assert!(!err.is_transient(), "{err:?}");
}
