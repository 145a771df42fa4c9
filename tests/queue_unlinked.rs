//! A binary that depends on the events crate (`demo`) but never names it,
//! as a web server or a file in `tests/` often does: the linker drops the
//! crate's events, so this binary's registry is empty. `queue!` by name
//! must not guess (the handler's queue, the params' check): it fails at the
//! call, naming the fix. Another service's event goes through the explicit
//! foreign form, on the queue the caller states.
//!
//! Do not `use demo` in this file: that would link the events.

use action_event::{Client, Error, QueueRequest};

fn assert_unlinked() {
    let names = action_event::registry().expect("registry").names();
    assert!(
        names.is_empty(),
        "this test binary must link no events (does it name `demo`?): {names:?}"
    );
}

#[tokio::test]
async fn queue_by_name_in_a_binary_that_links_no_events_names_the_fix() {
    assert_unlinked();
    // `hello_world` is `queue = "high"` with `name: String` in `demo`; here
    // nothing knows it: no silent `medium`, no skipped check.
    for r in [
        action_event::queue!(hello_world, name = "world").await,
        action_event::queue!(hello_world, name = 5).await,
    ] {
        let err = r.expect_err("an event this binary does not link");
        assert!(matches!(err, Error::UnknownEvent { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("unknown event `hello_world`: this binary links no events: add `use my_events as _;`"),
            "{msg}"
        );
        assert!(
            msg.contains(r#"`QueueRequest::foreign("hello_world").queue("...")`"#),
            "{msg}"
        );
    }
}

#[tokio::test]
async fn the_foreign_form_lands_on_the_stated_queue() {
    assert_unlinked();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("shop.db").display());
    let client = Client::connect(&url).await.expect("client");

    client
        .send(
            QueueRequest::foreign("hello_world")
                .queue("high")
                .param("name", "world"),
        )
        .await
        .expect("foreign, through the client");
    client
        .scope(
            QueueRequest::foreign("billing_sync")
                .queue("urgent")
                .param("id", 7)
                .send(),
        )
        .await
        .expect("foreign, through send");

    let broker = client.broker();
    assert_eq!(broker.depth("high").await.expect("depth").waiting, 1);
    assert_eq!(broker.depth("urgent").await.expect("depth").waiting, 1);
    assert_eq!(broker.depth("medium").await.expect("depth").waiting, 0);

    // Without a queue it cannot know, it says so.
    let err = client
        .send(QueueRequest::foreign("billing_sync").param("id", 8))
        .await
        .expect_err("a foreign event without its queue");
    let msg = err.to_string();
    assert!(
        msg.contains(r#"a foreign event needs its queue"#)
            && msg.contains(r#"QueueRequest::foreign("billing_sync").queue("high")"#),
        "{msg}"
    );
    assert_eq!(broker.depth("medium").await.expect("depth").waiting, 0);
}
