//! Cargo features: an app that turns off `action_event`'s defaults and asks
//! for `sqlite` only builds no RabbitMQ, TLS or metrics crates, runs the
//! README's first flow, and gets an error naming the feature and the
//! Cargo.toml line for a URL or a flag whose feature it left out.
//!
//! Builds `tests/fixtures/sqlite_only`, a crate of its own, in the target
//! directory of `tests/linking.rs`'s fixture (kept across runs and shared, so
//! the dependencies both use, SQLite among them, are compiled once).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The crates a SQLite-only build must not compile.
const LEFT_OUT: [&str; 6] = [
    "lapin",
    "rustls",
    "ring",
    "prometheus-client",
    "amq-protocol",
    "axum",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/sqlite_only")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()));
    c.env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    c
}

/// Seeds the fixture's Cargo.lock from the workspace's: the same versions,
/// without a second committed lock file that would drift from the first.
fn seed_lock() {
    let lock = fixture().join("Cargo.lock");
    if !lock.exists() {
        std::fs::copy(root().join("Cargo.lock"), &lock).expect("seed the fixture's Cargo.lock");
    }
}

/// Builds the fixture once for every test of this file; its binary.
fn poller() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        seed_lock();
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
            .join("linked_events");
        let output = cargo()
            .arg("build")
            .arg("--quiet")
            .arg("--manifest-path")
            .arg(fixture().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .output()
            .expect("run cargo build");
        assert!(
            output.status.success(),
            "the fixture did not build ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        target_dir.join("debug/sqlite_only")
    })
}

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(poller())
        .args(args)
        .current_dir(dir)
        .env_remove("ACTION_EVENT_URL")
        .env("RUST_LOG", "info")
        .output()
        .expect("run the fixture's poller")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `cargo tree` of the package with `sqlite` only, and of the fixture app.
#[test]
fn a_sqlite_only_build_has_no_rabbitmq_tls_or_metrics_crates() {
    seed_lock();
    let package = cargo()
        .current_dir(root())
        .args(["tree", "-p", "action_event", "--no-default-features"])
        .args(["--features", "sqlite", "-e", "normal", "--prefix", "none"])
        .output()
        .expect("run cargo tree");
    let app = cargo()
        .args([
            "tree",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(fixture().join("Cargo.toml"))
        .output()
        .expect("run cargo tree");
    for (what, output) in [
        ("action_event --features sqlite", package),
        ("the fixture", app),
    ] {
        assert!(
            output.status.success(),
            "cargo tree of {what}: {}",
            text(&output)
        );
        let tree = String::from_utf8_lossy(&output.stdout);
        let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
        assert!(
            crates.contains(&"rusqlite"),
            "{what} has no rusqlite:\n{tree}"
        );
        for name in LEFT_OUT {
            assert!(!crates.contains(&name), "{what} depends on {name}:\n{tree}");
        }
    }
}

#[test]
fn the_sqlite_only_app_runs_the_hello_world_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let queued = run(
        &["--broker", &url, "queue", "hello_world", "name=world"],
        dir.path(),
    );
    assert!(queued.status.success(), "{}", text(&queued));
    let ran = run(&["--broker", &url, "--exit-when-empty"], dir.path());
    assert!(ran.status.success(), "{}", text(&ran));
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "hello world\n",
        "{}",
        text(&ran)
    );
}

#[test]
fn a_url_whose_backend_is_left_out_names_the_feature_and_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (url, feature) in [
        ("amqp://guest:s3cret@127.0.0.1:5672/%2f", "amqp"),
        ("amqps://guest:s3cret@127.0.0.1:5671/%2f", "tls"),
    ] {
        let scheme = &url[..url.find("://").expect("a scheme") + 3];
        for args in [
            vec!["--broker", url, "--exit-when-empty"],
            vec!["--broker", url, "queue", "hello_world", "name=world"],
        ] {
            let out = run(&args, dir.path());
            let all = text(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {all}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = format!(
                "`{scheme}` needs action_event's \"{feature}\" feature, which this build leaves out: in Cargo.toml, action_event = {{ version = \"{}\", features = [\"{feature}\"] }}",
                env!("CARGO_PKG_VERSION")
            );
            assert!(
                stderr.contains(&line),
                "{args:?}: expected `{line}` in {all}"
            );
            assert!(
                !stderr.contains("s3cret"),
                "{args:?}: the password shows: {all}"
            );
        }
    }
}

#[test]
fn metrics_left_out_is_a_usage_error_naming_the_feature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(
        &["--metrics", "127.0.0.1:9187", "--exit-when-empty"],
        dir.path(),
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!(
        "error: --metrics needs action_event's \"metrics\" feature, which this build leaves out: in Cargo.toml, action_event = {{ version = \"{}\", features = [\"metrics\"] }}",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        stderr.starts_with(&line),
        "expected `{line}` first in {all}"
    );
    assert!(stderr.contains("Usage:"), "{all}");
    assert!(
        !dir.path().join("action_event.db").exists(),
        "a usage error must not open the broker"
    );
}
