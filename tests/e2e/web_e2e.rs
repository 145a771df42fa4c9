//! The dashboard (`poller web`) in a real headless Chromium, driven over
//! WebDriver (chromedriver + fantoccini), against real poller processes on
//! SQLite and RabbitMQ.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
//! them). Without them these tests say SKIPPED loudly and pass, unless
//! `ACTION_EVENT_REQUIRE_BROWSER=1` (CI sets it): then they fail.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};

use crate::common::*;

const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    let started = Instant::now();
    while !answers(port) {
        assert!(
            alive(child),
            "{what} exited before it answered on port {port}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not answer on port {port} within 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A chromedriver process and a headless Chromium session through it.
/// Killed (by its own pid) when dropped.
struct Driver {
    child: Child,
    browser: Browser,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser, or `None` (after a loud SKIPPED) when this machine has no
/// chromedriver; a failure when `ACTION_EVENT_REQUIRE_BROWSER=1`.
async fn browser() -> Option<Driver> {
    let present = Command::new(CHROMEDRIVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::path::Path::new(CHROMIUM).exists();
    if !present {
        if std::env::var("ACTION_EVENT_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!(
                "no chromedriver/chromium and ACTION_EVENT_REQUIRE_BROWSER=1: apt-get install -y chromium chromium-driver"
            );
        }
        eprintln!(
            "SKIPPED: no `chromedriver` or {CHROMIUM} (apt-get install -y chromium chromium-driver): the dashboard's browser test did not run"
        );
        return None;
    }
    let port = free_port();
    let mut child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    wait_port(port, "chromedriver", &mut child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a headless Chromium session");
    Some(Driver { child, browser })
}

/// `poller web` in this world, on a port of its own.
struct Web {
    child: Child,
    url: String,
}

impl Drop for Web {
    fn drop(&mut self) {
        // No assertion here: a panicking test drops it too.
        if alive(&mut self.child) {
            send_signal(&self.child, SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn start_web(w: &World, log: &str, extra: &[&str]) -> Web {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut args = vec!["web", "--bind", &bind, "--sample-every", "500ms"];
    args.extend_from_slice(extra);
    let mut child = w.spawn(log, &args);
    wait_port(port, "poller web", &mut child);
    Web {
        child,
        url: format!("http://{bind}"),
    }
}

/// Polls `f` every 100 ms until it gives `Some`, or panics after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(b: &Browser, css: &str) -> Option<String> {
    b.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn attr_of(b: &Browser, css: &str, attr: &str) -> Option<String> {
    b.find(Locator::Css(css))
        .await
        .ok()?
        .attr(attr)
        .await
        .ok()?
}

/// One raw HTTP/1.1 request; the status line and the whole answer.
fn http(port_url: &str, request: &str) -> String {
    let addr = port_url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect to poller web");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_backlog_chart_pollers_and_retries_a_dead_event() {
    let Some(driver) = browser().await else {
        return;
    };
    let b = &driver.browser;
    for backend in backends() {
        let w = World::new(&backend);
        // Two poller processes serving `high` only: `low` keeps its backlog.
        let fast = ["--retry-base", "50ms", "--queues", "high"];
        let mut p1 = w.spawn("p1.log", &[&["--id", "1"][..], &fast[..]].concat());
        // The second one has no `--id` (no PID file): the broker still
        // knows it (SQLite: its row in `poller_reports`).
        let mut p2 = w.spawn("p2.log", &fast);
        for i in 0..7 {
            w.queue_json(
                "record",
                "low",
                serde_json::json!({"tag": format!("backlog{i}")}),
            )
            .await;
        }
        let gated = w
            .queue_json("gated", "high", serde_json::json!({"tag": "g"}))
            .await
            .to_string();
        let doomed = w
            .queue_json("gated", "high", serde_json::json!({"tag": "p"}))
            .await
            .to_string();
        w.wait_dead(Duration::from_secs(30), "both gated events to die", |d| {
            d.iter().any(|e| e.id == gated) && d.iter().any(|e| e.id == doomed)
        })
        .await;
        let web = start_web(&w, "web.log", &[]);

        // Overview: the known backlog, in priority order.
        b.goto(&format!("{}/", web.url)).await.expect("overview");
        eventually(Duration::from_secs(20), "low to show 7 waiting", || async {
            (text_of(b, "tr[data-queue=low] td.waiting").await.as_deref() == Some("7"))
                .then_some(())
        })
        .await;
        let order = b
            .execute("return [...document.querySelectorAll('#queues tbody tr')].map(r => r.dataset.queue)", vec![])
            .await
            .expect("queue order");
        assert_eq!(
            order,
            serde_json::json!(["high", "medium", "low"]),
            "{backend:?}"
        );
        assert_eq!(
            text_of(b, "tr[data-queue=high] td.waiting")
                .await
                .as_deref(),
            Some("0")
        );

        // The live chart moves while events run, without a reload.
        b.execute("window.__same_page = true", vec![])
            .await
            .expect("mark page");
        let before: f64 = attr_of(b, "#chart", "data-processed-total")
            .await
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        for i in 0..40 {
            w.queue_json(
                "record",
                "high",
                serde_json::json!({"tag": format!("load{i}"), "sleep_ms": 20}),
            )
            .await;
        }
        eventually(
            Duration::from_secs(30),
            "the chart to show processed events",
            || async {
                let now: f64 = attr_of(b, "#chart", "data-processed-total")
                    .await?
                    .parse()
                    .ok()?;
                (now > before).then_some(())
            },
        )
        .await;
        let same = b
            .execute("return window.__same_page === true", vec![])
            .await
            .expect("same page");
        assert_eq!(
            same,
            serde_json::json!(true),
            "the chart moved by a reload, not live"
        );
        let drawn = b
            .execute("return document.querySelector('#chart polyline.processed').getAttribute('points').split(' ').length", vec![])
            .await
            .expect("points");
        assert!(drawn.as_u64().unwrap_or(0) >= 2, "{drawn}");

        // Pollers: both processes.
        let pids = [p1.id().to_string(), p2.id().to_string()];
        b.goto(&format!("{}/pollers", web.url))
            .await
            .expect("pollers");
        eventually(Duration::from_secs(20), "both pollers listed", || async {
            let shown = b
                .execute(
                    "return [...document.querySelectorAll('tr.poller')].map(r => r.dataset.pid)",
                    vec![],
                )
                .await
                .ok()?;
            let ok = pids
                .iter()
                .all(|p| shown.as_array().is_some_and(|a| a.iter().any(|s| s == p)));
            if !ok {
                b.refresh().await.ok()?;
            }
            ok.then_some(())
        })
        .await;

        // A dead event in full: body and every attempt's error (retries = 2: 3 attempts).
        b.goto(&format!("{}/dead/{gated}", web.url))
            .await
            .expect("dead event");
        let attempts = b
            .execute(
                "return document.querySelectorAll('#attempts tbody tr').length",
                vec![],
            )
            .await
            .expect("attempts");
        assert_eq!(attempts, serde_json::json!(3), "{backend:?}");
        let errors = text_of(b, "#attempts").await.unwrap_or_default();
        assert!(errors.contains("gate `g` is closed"), "{errors}");
        let body = text_of(b, "#dead-body").await.unwrap_or_default();
        assert!(
            body.contains("\"gated\"") && body.contains("\"g\""),
            "{body}"
        );
        b.goto(&format!("{}/dead/no-such-id", web.url))
            .await
            .expect("unknown id");
        let title = b
            .find(Locator::Css("h1"))
            .await
            .expect("h1")
            .text()
            .await
            .expect("text");
        assert!(title.starts_with("404"), "{title}");

        // Purge one, through the confirmation page.
        b.goto(&format!("{}/dead", web.url))
            .await
            .expect("dead list");
        b.find(Locator::Css(&format!(
            "tr[data-id='{doomed}'] input[type=checkbox]"
        )))
        .await
        .expect("checkbox")
        .click()
        .await
        .expect("tick");
        b.find(Locator::Css("#purge-selected"))
            .await
            .expect("purge button")
            .click()
            .await
            .expect("purge");
        let warning = eventually(Duration::from_secs(10), "the confirmation page", || async {
            text_of(b, ".warning").await
        })
        .await;
        assert!(warning.starts_with("Purge 1 dead event(s)?"), "{warning}");
        assert!(
            w.dead().await.iter().any(|d| d.id == doomed),
            "purged before the confirmation"
        );
        b.find(Locator::Css("#confirm-purge"))
            .await
            .expect("confirm")
            .click()
            .await
            .expect("confirm purge");
        let done = eventually(Duration::from_secs(10), "the purged message", || async {
            text_of(b, "#done").await
        })
        .await;
        assert_eq!(done, "Purged 1 dead event(s).");
        assert!(
            w.dead().await.iter().all(|d| d.id != doomed),
            "{backend:?}: not purged"
        );

        // Dead letters: retry from the page; it runs and leaves the list.
        w.open_gate("g");
        b.goto(&format!("{}/dead", web.url))
            .await
            .expect("dead list");
        let row = format!("tr[data-id='{gated}']");
        b.find(Locator::Css(&format!("{row} button.retry-one")))
            .await
            .expect("retry button")
            .click()
            .await
            .expect("click retry");
        let done = eventually(Duration::from_secs(10), "the retried message", || async {
            text_of(b, "#done").await
        })
        .await;
        assert_eq!(done, "Retried 1 dead event(s).");
        assert!(
            b.find(Locator::Css(&row)).await.is_err(),
            "{backend:?}: the retried event is still listed"
        );
        w.wait_records(Duration::from_secs(20), "the retried event to run", |r| {
            r.iter().any(|x| x.tag == "g" && x.what == "end")
        });
        assert!(
            w.dead().await.iter().all(|d| d.id != gated),
            "{backend:?}: the retried event died again"
        );

        // A POST without the CSRF token is refused; nothing changes.
        let status = b
            .execute(
                "return fetch('/dead/purge', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'all=1&confirm=yes'}).then(r => r.status)",
                vec![],
            )
            .await
            .expect("fetch");
        assert_eq!(status, serde_json::json!(403), "{backend:?}");

        drop(web);
        stop(&mut p1, "poller 1");
        stop(&mut p2, "poller 2");
    }
}

#[test]
fn with_auth_a_request_without_credentials_gets_401() {
    let w = World::new(&Backend::Sqlite);
    let web = start_web(
        &w,
        "web.log",
        &["--auth", "basic:ops:s3cret", "--read-only"],
    );
    let host = web.url.trim_start_matches("http://").to_string();
    let bare = http(
        &web.url,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    assert!(bare.starts_with("HTTP/1.1 401"), "{bare}");
    assert!(
        bare.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{bare}"
    );
    let metrics = http(
        &web.url,
        &format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    assert!(metrics.starts_with("HTTP/1.1 401"), "{metrics}");
    let wrong = http(
        &web.url,
        &format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic b3BzOndyb25n\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    // ops:s3cret
    let ok = http(
        &web.url,
        &format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic b3BzOnMzY3JldA==\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("read-only"), "{ok}");
    // Read-only: even a POST with credentials changes nothing.
    let post = http(
        &web.url,
        &format!(
            "POST /dead/purge HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic b3BzOnMzY3JldA==\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\nConnection: close\r\n\r\nall=1&x=1"
        ),
    );
    assert!(post.starts_with("HTTP/1.1 403"), "{post}");
}

/// Pause stops a queue within a second on two pollers; resume restarts
/// it; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_a_queue_from_the_dashboard() {
    let Some(driver) = browser().await else {
        return;
    };
    let b = &driver.browser;
    for backend in backends() {
        let w = World::new(&backend);
        let mut p1 = w.spawn("p1.log", &["--id", "1", "--queues", "high low"]);
        let mut p2 = w.spawn("p2.log", &["--id", "2", "--queues", "high low"]);
        let web = start_web(&w, "web.log", &[]);
        b.goto(&format!("{}/", web.url)).await.expect("overview");
        b.find(Locator::Css("tr[data-queue=low] button.pause"))
            .await
            .expect("pause button")
            .click()
            .await
            .expect("pause");
        eventually(Duration::from_secs(5), "low shown paused", || async {
            (text_of(b, "tr[data-queue=low] td.state").await.as_deref() == Some("paused"))
                .then_some(())
        })
        .await;
        // Within a second every poller has stopped taking from `low`.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for i in 0..5 {
            w.queue_json(
                "record",
                "low",
                serde_json::json!({"tag": format!("paused{i}")}),
            )
            .await;
        }
        w.queue_json("record", "high", serde_json::json!({"tag": "still-high"}))
            .await;
        w.wait_records(
            Duration::from_secs(10),
            "high to run while low is paused",
            |r| r.iter().any(|x| x.tag == "still-high" && x.what == "end"),
        );
        assert!(
            !w.records().iter().any(|x| x.tag.starts_with("paused")),
            "{backend:?}: a paused queue ran"
        );
        eventually(Duration::from_secs(10), "low to show 5 waiting", || async {
            (text_of(b, "tr[data-queue=low] td.waiting").await.as_deref() == Some("5"))
                .then_some(())
        })
        .await;
        b.find(Locator::Css("tr[data-queue=low] button.resume"))
            .await
            .expect("resume button")
            .click()
            .await
            .expect("resume");
        w.wait_records(Duration::from_secs(10), "low to run after resume", |r| {
            r.iter()
                .filter(|x| x.tag.starts_with("paused") && x.what == "end")
                .count()
                == 5
        });
        drop(web);
        stop(&mut p1, "poller 1");
        stop(&mut p2, "poller 2");
    }
}
