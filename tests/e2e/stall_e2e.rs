//! The stall check of quorum dead-lettering (`management=` URL option;
//! `action_event/src/broker/amqp/stall.rs`), end to end, on a private
//! RabbitMQ node with the management plugin.
//!
//! RabbitMQ 3.10.8's stall (a delay queue's dead-letter worker waiting for
//! good after the work queue's leader died, see `cluster_dlx_e2e.rs`) needs
//! a node death at the right millisecond. Its signature is reproduced
//! deterministically on one node instead: events delayed into
//! `<prefix>delay.<ms>` whose work queue is deleted before they are due.
//! RabbitMQ's at-least-once worker then keeps them dead-lettered but
//! unforwarded (no route): counted in `messages`, neither ready nor
//! unacked, exactly what the stall looks like through the API. They move
//! on when the work queue is back and the worker resends
//! (`dead_letter_worker_publisher_confirm_timeout`, 180 s by default, set
//! to 5 s here), which stands in for the operator's leadership transfer.
//!
//! The test shows: `poller status` prints a WARNING naming the queue and
//! the count; the dashboard's overview shows it as a banner; a poller logs
//! the WARN; the poller logs the INFO when it
//! clears, and every event ran (nothing lost).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use action_event::QueueRequest;
use action_event_test_support::rabbit_node::{self, RabbitNode};

/// `(messages, messages_ready, messages_unacknowledged)` of `queue`, from
/// the management API (`None` until it has stats).
fn api_counts(node: &RabbitNode, queue: &str) -> Option<(u64, u64, u64)> {
    let base = node.management_url();
    let authority = base.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&authority).ok()?;
    let req = format!(
        "GET /api/queues/%2F/{queue}?columns=messages,messages_ready,messages_unacknowledged HTTP/1.0\r\n\
         Host: {authority}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64());
    Some((
        n("messages")?,
        n("messages_ready")?,
        n("messages_unacknowledged")?,
    ))
}

/// `GET /` of `poller web` at `bind`, once it answers (at most 30 s).
fn overview(bind: &str, web: &mut std::process::Child) -> String {
    let started = Instant::now();
    loop {
        assert!(alive(web), "poller web exited");
        if let Ok(mut s) = std::net::TcpStream::connect(bind) {
            s.set_read_timeout(Some(Duration::from_secs(15)))
                .expect("timeout");
            let req = format!("GET / HTTP/1.1\r\nHost: {bind}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).expect("send");
            let mut page = String::new();
            let _ = s.read_to_string(&mut page);
            return page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "poller web did not answer on {bind}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stalled_delay_queue_is_reported_by_status_and_the_poller_and_clears() {
    if !rabbit_node::available_or_skip() {
        return;
    }
    let mut node = RabbitNode::start_with_management("");
    // Read when a quorum queue's dead-letter worker starts (when the delay
    // queue is declared, below): resend unforwarded events every 5 s.
    node.set_rabbit_env(&[("dead_letter_worker_publisher_confirm_timeout", "5000")]);
    let w = World::amqp_at(&format!(
        "{}?queue_type=quorum&management={}",
        node.url(),
        node.management_url()
    ));
    let prefix = w.url.split("prefix=").nth(1).expect("a prefix").to_string();
    let (work, delay) = (format!("{prefix}medium"), format!("{prefix}delay.5000"));

    // Without `management`, status says the check is off.
    let off = World::amqp_at(&format!("{}?queue_type=quorum", node.url()));
    let status = off.run_ok(&["status"]);
    assert!(
        status.contains("stall check")
            && status.contains("is off")
            && status.contains("management=http://"),
        "{status}"
    );

    // ... and a poller logs it once, at INFO, when it starts taking.
    let mut p = off.spawn("off.log", &["--queues", "high"]);
    wait_log(&off, "off.log", "quorum queues is off");
    stop(&mut p, "the poller without `management`");
    let log = off.log("off.log");
    assert!(
        log.lines()
            .filter(|l| l.contains("quorum queues is off"))
            .all(|l| l.contains("INFO"))
            && log.matches("quorum queues is off").count() == 1,
        "{log}"
    );

    // A management URL where nothing answers: status says the check
    // cannot run, naming the URL and the option to fix.
    let closed = format!("http://127.0.0.1:{}", rabbit_node::free_port());
    let broken = World::amqp_at(&format!(
        "{}?queue_type=quorum&management={closed}",
        node.url()
    ));
    let status = broken.run_ok(&["status", "--pid-dir", "none"]);
    assert!(
        status.contains("WARNING: ")
            && status.contains("cannot read RabbitMQ's management API")
            && status.contains(&closed),
        "{status}"
    );

    // 20 events due in 5 s; their work queue is deleted before that.
    const N: usize = 20;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = w.client().await;
        for i in 0..N {
            client
                .send(
                    QueueRequest::foreign("record")
                        .params_value(serde_json::json!({"tag": format!("stall{i}")}))
                        .queue("medium")
                        .delay(Duration::from_secs(5)),
                )
                .await
                .expect("queue");
        }
    });
    node.ctl_ok(&["delete_queue", &work]);

    // The signature: all of them in `messages`, none ready or unacked.
    let started = Instant::now();
    loop {
        if api_counts(&node, &delay) == Some((N as u64, 0, 0)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the delay queue never showed {N} dead-lettered, unforwarded events: {:?}; {}",
            api_counts(&node, &delay),
            node.ctl_ok(&[
                "list_queues",
                "name",
                "messages",
                "messages_ready",
                "messages_unacknowledged"
            ])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let stuck_at = Instant::now();

    // `poller status` warns once it has held 20 s (the API's samples).
    let needle = format!("{N} event(s) in `{delay}`");
    let status = loop {
        let status = w.run_ok(&["status"]);
        if status.contains(&needle) {
            break status;
        }
        assert!(
            !status.contains("WARNING") || status.contains("stall check"),
            "an unexpected warning: {status}"
        );
        assert!(
            stuck_at.elapsed() < Duration::from_secs(60),
            "status never warned about {delay}:\n{status}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let timed = Instant::now();
    let again = w.run_ok(&["status", "--pid-dir", "none"]);
    eprintln!(
        "status warned {:?} after the events were stuck (one status run with the check: {:?}):\n{status}",
        stuck_at.elapsed(),
        timed.elapsed()
    );
    assert!(again.contains(&needle), "{again}");
    assert!(status.contains("WARNING: "), "{status}");
    assert!(status.contains("ra:transfer_leadership"), "{status}");
    assert!(status.contains(node.name()), "the leader node: {status}");

    // The dashboard's overview shows it as a banner.
    let port = rabbit_node::free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut web = w.spawn("web.log", &["web", "--bind", &bind]);
    let page = overview(&bind, &mut web);
    send_signal(&web, SIGTERM);
    let _ = web.wait();
    assert!(
        page.contains("id=\"broker-warning\"") && page.contains(&needle),
        "no banner on the overview:\n{page}"
    );

    // A poller (serving another queue, so the work queue stays deleted)
    // logs the WARN within its first look.
    let mut watcher = w.spawn("watcher.log", &["--queues", "high"]);
    wait_log(&w, "watcher.log", &needle);
    let log = w.log("watcher.log");
    assert!(log.contains("stall check on: "), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&needle)),
        "{log}"
    );

    // The work queue comes back (a poller serving it declares it): the
    // worker resends, the events run, the watcher says it is over.
    let mut worker = w.spawn("worker.log", &["--queues", "medium"]);
    let records = w.wait_records(Duration::from_secs(60), "every stalled event ran", |r| {
        (0..N).all(|i| {
            of_tag(r, &format!("stall{i}"))
                .iter()
                .any(|x| x.what == "end")
        })
    });
    let cleared = Instant::now();
    while !w.log("watcher.log").contains("the stall is over") {
        assert!(
            cleared.elapsed() < Duration::from_secs(40),
            "the watcher never logged the end of the stall:\n{}",
            w.log("watcher.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(&mut worker, "the worker");
    stop(&mut watcher, "the watcher");
    let runs = records.iter().filter(|r| r.what == "start").count();
    assert!(runs >= N, "{runs} runs of {N} events");
    let status = w.run_ok(&["status"]);
    assert!(!status.contains("WARNING"), "cleared, yet: {status}");
}
