//! The poller's command line with the real binary: misuse is a usage error
//! (exit 2, clap's format on stderr), `--version`, what `generate` adds to
//! `.gitignore`, what a stop says it waits for, and how a poller places and
//! names queues it was not told about (SQLite).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{Backend, World, ends_by_tag, of_tag, stop};

const CUSTOM: &str = env!("CARGO_BIN_EXE_e2e_custom_queues");

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn misuse_exits_2_with_a_usage_message_on_stderr_not_a_log_line() {
    let w = World::new(&Backend::Sqlite);
    for (args, says) in [
        (&["dead", "retry"][..], "error: give one id or --all"),
        (
            &["dead", "purge"],
            "error: give one id, --all or --older-than",
        ),
        (
            &["dead", "list", "--concurrency", "8"],
            "error: unexpected argument '--concurrency' found",
        ),
        (
            &["--concurrency", "8", "dead", "list"],
            "error: unexpected argument '--concurrency' found",
        ),
        (
            &["status", "--queues", "high"],
            "error: unexpected argument '--queues' found",
        ),
        (
            &["queue", "record", "tag"],
            "error: event `record`: param `tag` is not `key=value`",
        ),
        (
            &["queue", "typed", "tag=t", "count=many", "people_ids=[1]"],
            "error: event `typed`: params do not fit at `count`",
        ),
        (&["--queues", " "], "error: --queues names no queue"),
        (
            &["dead", "retry", "some-id", "--all"],
            "error: the argument",
        ),
        (
            &["generate", "event", "hello_world"],
            "error: generate: bad event name",
        ),
    ] {
        let out = w.run(args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.starts_with(says), "{args:?}: {stderr}");
        assert!(
            stderr.contains("\nUsage: e2e_poller "),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains(" ERROR ") && !stderr.contains("INFO"),
            "{args:?}: a usage error, not a log line: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    // Checked before anything connects: no broker file was created.
    assert!(!w.path().join("events.db").exists());

    // A flag of another subcommand names the subcommands it belongs to.
    let (_, stderr) = text(&w.run(&["dead", "list", "--concurrency", "8"]));
    assert!(
        stderr.contains(
            "tip: `--concurrency` is a flag of `poller start` (or `poller` alone): write it with that subcommand"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("Usage: e2e_poller dead list [OPTIONS]"),
        "{stderr}"
    );
    let (_, stderr) = text(&w.run(&["status", "--id", "2"]));
    assert!(
        stderr.contains("`--id` is a flag of `poller start` (or `poller` alone), `poller stop`"),
        "{stderr}"
    );

    // A command that fails at its work (not its command line) exits 1 with
    // `error: ...` on stderr, not a timestamped log line.
    let out = w.run(&["dead", "show", "no-such-id"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // (The INFO line naming the SQLite file may come first.)
    assert!(
        stderr.ends_with("\nerror: no dead event with id `no-such-id`\n")
            || stderr == "error: no dead event with id `no-such-id`\n",
        "{stderr}"
    );
    assert!(!stderr.contains(" ERROR "), "{stderr}");
}

#[test]
fn version_and_help_exit_0() {
    let w = World::new(&Backend::Sqlite);
    let out = w.run(&["--version"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout,
        format!("poller (action_event {})\n", env!("CARGO_PKG_VERSION"))
    );
    let out = w.run(&["dead", "retry", "--help"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("--all"), "{stdout}");
    assert!(!stdout.contains("--concurrency"), "scoped flags: {stdout}");
}

fn cargo_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"shop\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\naction_event = \"0.1\"\nserde = \"1\"\n",
    )
    .expect("write");
    std::fs::write(dir.join("src/lib.rs"), "").expect("write");
}

fn generate(dir: &Path, name: &str) -> String {
    let out = Command::new(crate::common::POLLER)
        .args(["generate", "event", name])
        .current_dir(dir)
        .output()
        .expect("run generate");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    stdout
}

#[test]
fn generate_adds_what_pollers_write_to_gitignore_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path();
    cargo_project(app);
    std::fs::write(app.join(".gitignore"), "/target\n/tmp\n").expect("write");

    let stdout = generate(app, "HelloWorld");
    assert!(
        stdout.lines().any(|l| l == "      update  .gitignore"),
        "{stdout}"
    );
    let ignore = std::fs::read_to_string(app.join(".gitignore")).expect("read");
    assert!(
        ignore.starts_with("/target\n/tmp\n"),
        "kept as it was: {ignore}"
    );
    for line in ["log/", "action_event.db*"] {
        assert_eq!(
            ignore.lines().filter(|l| *l == line).count(),
            1,
            "{line}: {ignore}"
        );
    }
    assert!(
        !ignore.lines().any(|l| l == "tmp/"),
        "/tmp is there already: {ignore}"
    );

    // A second event: every line is there, nothing is added.
    let stdout = generate(app, "SendEmail");
    assert!(!stdout.contains(".gitignore"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(app.join(".gitignore")).expect("read"),
        ignore
    );

    // No .gitignore yet: one is created with the three lines.
    let fresh = tempfile::tempdir().expect("tempdir");
    cargo_project(fresh.path());
    let stdout = generate(fresh.path(), "HelloWorld");
    assert!(
        stdout.lines().any(|l| l == "      create  .gitignore"),
        "{stdout}"
    );
    let ignore = std::fs::read_to_string(fresh.path().join(".gitignore")).expect("read");
    for line in ["tmp/", "log/", "action_event.db*"] {
        assert_eq!(
            ignore.lines().filter(|l| *l == line).count(),
            1,
            "{line}: {ignore}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_counts_the_handlers_still_running() {
    let w = World::new(&Backend::Sqlite);
    // Two slow events, then quick ones that finish (and are acked) while
    // the slow ones run.
    w.queue_records(2, "medium", "slow", 8_000).await;
    w.queue_records(40, "medium", "quick", 0).await;
    let mut p = w.spawn("p.log", &["--queues", "medium", "--concurrency", "8"]);
    w.wait_records(Duration::from_secs(30), "the quick events to end", |r| {
        of_tag(r, "slow-0").len() == 1
            && of_tag(r, "slow-1").len() == 1
            && ends_by_tag(r)
                .keys()
                .filter(|t| t.starts_with("quick-"))
                .count()
                == 40
    });
    stop(&mut p, "poller");
    let log = w.log("p.log");
    assert!(
        log.contains("Stopping: finishing 2 event(s) in hand (up to 30s)"),
        "{log}"
    );
    let ends = ends_by_tag(&w.records());
    assert_eq!(
        (ends.get("slow-0"), ends.get("slow-1")),
        (Some(&1), Some(&1))
    );
}

fn custom(w: &World, args: &[&str]) -> (String, String) {
    let out = Command::new(CUSTOM)
        .args(args)
        .current_dir(w.path())
        .env("ACTION_EVENT_URL", &w.url)
        .env("RUST_LOG", "info")
        .output()
        .expect("run the custom-queues poller");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn custom_queues_are_placed_after_low_with_a_warning_naming_the_order_and_the_fix() {
    let w = World::new(&Backend::Sqlite);
    let (_, log) = custom(&w, &["--exit-when-empty"]);
    assert!(
        log.contains("Processing queues: high,medium,low,mailers,urgent"),
        "{log}"
    );
    let warn = log
        .lines()
        .find(|l| l.contains(" WARN Custom queue(s)"))
        .unwrap_or_else(|| panic!("no warning: {log}"));
    assert!(
        warn.ends_with(
            "WARN Custom queue(s) `mailers` (event `send_digest`), `urgent` (event `page_oncall`) come after `low`: this poller serves high,medium,low,mailers,urgent, highest first. To place them, give the whole order, e.g. --queues \"mailers urgent high medium low\""
        ),
        "{warn}"
    );

    // Placed: no warning; a queue left out is named, at INFO.
    let (_, log) = custom(
        &w,
        &["--exit-when-empty", "--queues", "urgent high medium low"],
    );
    assert!(
        log.contains("Processing queues: urgent,high,medium,low"),
        "{log}"
    );
    assert!(!log.contains("WARN"), "{log}");
    assert!(
        log.contains(
            "INFO Not serving `mailers` (event `send_digest`): --queues \"urgent high medium low\" leaves them to other pollers"
        ),
        "{log}"
    );

    // Served in the order given: urgent first.
    for (event, params) in [("ping", vec![]), ("page_oncall", vec!["who=ops"])] {
        let mut args = vec!["queue", event];
        args.extend(params);
        custom(&w, &args);
    }
    let (stdout, log) = custom(
        &w,
        &["--exit-when-empty", "--queues", "urgent high medium low"],
    );
    assert_eq!(stdout, "paged ops\n", "{log}");
    let order: Vec<String> = crate::common::processing_order(&log);
    assert_eq!(order, ["urgent", "high"], "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_empty_names_the_unserved_queues_where_events_wait() {
    let w = World::new(&Backend::Sqlite);
    // `mailers`: no event of this binary names it; `high`: not served here.
    w.run_ok(&["queue", "record", "tag=m-0", "queue=mailers"]);
    w.run_ok(&["queue", "record", "tag=m-1", "queue=mailers", "delay=1h"]);
    w.run_ok(&["queue", "record", "tag=h-0", "queue=high"]);
    w.queue_records(3, "medium", "served", 0).await;

    let out = w.run(&["--exit-when-empty", "--queues", "medium"]);
    let (_, log) = text(&out);
    assert!(out.status.success(), "{log}");
    let ends = ends_by_tag(&w.records());
    assert_eq!(ends.len(), 3, "only the served queue ran: {ends:?}");
    assert!(!log.contains("All queues are empty"), "{log}");
    assert!(
        log.lines().any(|l| l.ends_with(
            "WARN The queues this poller serves (medium) are empty; exiting, but 3 event(s) wait on queues it does not serve: high (1), mailers (2). A poller whose queues name them serves them, e.g. --queues \"medium high mailers\""
        )),
        "{log}"
    );

    // Every queue served: what is due runs, and a delayed event on a served
    // queue does not hold the exit (as before).
    let out = w.run(&["--exit-when-empty", "--queues", "high mailers medium"]);
    let (_, log) = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("All queues are empty; exiting"), "{log}");
    assert_eq!(ends_by_tag(&w.records()).len(), 5);
}

/// RabbitMQ cannot list queues: the exit line claims only what it counted
/// (the served queues and those the binary's events name), and says that
/// a queue no event names is not among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_empty_on_rabbitmq_claims_only_the_queues_it_counted() {
    if !crate::common::amqp_available() {
        return; // amqp_available said why (or failed, when required)
    }
    let w = World::new(&Backend::Amqp);
    w.run_ok(&["queue", "record", "tag=m-0", "queue=mailers"]);
    w.queue_records(2, "medium", "served", 0).await;

    let out = w.run(&["--exit-when-empty", "--queues", "medium"]);
    let (_, log) = text(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(ends_by_tag(&w.records()).len(), 2, "{log}");
    assert!(!log.contains("All queues are empty"), "{log}");
    assert!(
        log.contains(
            "The queues this poller serves (medium) and those its events name are empty; exiting (this broker cannot list other queues"
        ),
        "{log}"
    );
}
