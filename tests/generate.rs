//! `poller generate event HelloWorld`, the original's `script/generate
//! event HelloWorld`: run with the demo's poller binary inside other Cargo
//! projects, then (the slow test) build a fresh project with what it
//! generated and run the new event through that project's own poller.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const POLLER: &str = env!("CARGO_BIN_EXE_poller");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The target dir of the projects tests build themselves (shared with
/// tests/readme.rs): dependencies compile once, later runs are quick. Not
/// `target/` itself, whose lock the outer `cargo test` may hold.
fn nested_target() -> PathBuf {
    root().join("target/nested")
}

fn generate(dir: &Path, name: &str) -> Output {
    Command::new(POLLER)
        .args(["generate", "event", name])
        .current_dir(dir)
        .env_remove("ACTION_EVENT_URL")
        .output()
        .expect("run poller generate")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The lines the generator printed, e.g. `("create", "src/events/x.rs")`.
fn actions(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let verb = it.next()?;
            let path = it.next()?;
            ["create", "update", "exists"]
                .contains(&verb)
                .then(|| (verb.to_string(), path.to_string()))
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn generate_checks_names_never_overwrites_and_adds_to_what_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path();
    std::fs::create_dir(app.join("src")).expect("mkdir");
    std::fs::write(
        app.join("Cargo.toml"),
        "[package]\nname = \"shop-app\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n",
    )
    .expect("write");
    std::fs::write(app.join("src/lib.rs"), "//! The shop.\n\npub mod cart;\n").expect("write");

    for (bad, why) in [
        ("hello_world", "CamelCase"),
        ("helloWorld", "CamelCase"),
        ("Match", "Rust keyword"),
        ("", "empty"),
        ("Event", "name the event"),
    ] {
        let out = generate(app, bad);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{bad:?} was accepted: {stdout}");
        assert!(
            stderr.contains(&format!("bad event name `{bad}`")) && stderr.contains(why),
            "{bad:?}: {stderr}"
        );
    }
    assert!(
        !app.join("src/events").exists(),
        "a bad name writes nothing"
    );

    // The first event: everything it needs is created.
    let out = generate(app, "HelloWorld");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        actions(&stdout),
        pairs(&[
            ("create", "src/events/hello_world.rs"),
            ("create", "src/events/application_event.rs"),
            ("create", "src/events/mod.rs"),
            ("update", "src/lib.rs"),
            ("create", "src/bin/poller.rs"),
            ("create", ".gitignore"),
        ]),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "      create  src/events/hello_world.rs"),
        "printed like the original: {stdout}"
    );
    assert!(
        stdout.contains("note: Cargo.toml does not depend on action_event"),
        "{stdout}"
    );
    let event = read(app, "src/events/hello_world.rs");
    for part in [
        "#[derive(Debug, Serialize, Deserialize)]",
        "#[action_event(extends = ApplicationEvent)]",
        "pub struct HelloWorldEvent {",
        "impl Process for HelloWorldEvent {",
        "HelloWorldEvent processed: name=",
        "queue!(hello_world, name = \"world\")",
    ] {
        assert!(event.contains(part), "missing {part:?} in\n{event}");
    }
    assert_eq!(
        read(app, "src/lib.rs"),
        "//! The shop.\n\npub mod cart;\n\npub mod events;\n"
    );
    assert!(read(app, "src/bin/poller.rs").contains("use shop_app as _;"));
    let base = read(app, "src/events/application_event.rs");
    assert!(
        base.contains("#[action_event(base)]") && base.contains("pub struct ApplicationEvent;")
    );

    // Again: the event's file exists, so nothing is touched.
    std::fs::write(app.join("src/events/hello_world.rs"), "// mine\n").expect("write");
    let before = read(app, "src/events/mod.rs");
    let out = generate(app, "HelloWorldEvent");
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("src/events/hello_world.rs exists; not overwritten"),
        "{stderr}"
    );
    assert_eq!(read(app, "src/events/hello_world.rs"), "// mine\n");
    assert_eq!(read(app, "src/events/mod.rs"), before);

    // A second event: the base, mod.rs and the poller are there already.
    let out = generate(app, "SendHTMLEmail");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        actions(&stdout),
        pairs(&[
            ("create", "src/events/send_html_email.rs"),
            ("exists", "src/events/application_event.rs"),
            ("update", "src/events/mod.rs"),
            ("exists", "src/bin/poller.rs"),
        ]),
        "{stdout}"
    );
    let mods = read(app, "src/events/mod.rs");
    assert!(
        mods.contains(
            "pub mod application_event;\npub mod hello_world;\npub mod send_html_email;\n"
        ),
        "{mods}"
    );
    assert!(read(app, "src/events/send_html_email.rs").contains("pub struct SendHTMLEmailEvent {"));

    // Outside a Cargo project: a clear error.
    let empty = tempfile::tempdir().expect("tempdir");
    let out = generate(empty.path(), "HelloWorld");
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("no Cargo project here"), "{stderr}");
}

#[test]
fn a_generated_event_builds_queues_and_runs_in_a_fresh_project() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("gen_app");
    let out = Command::new("cargo")
        .args(["new", "--lib", "--vcs", "none", "--name", "gen_app"])
        .arg(&app)
        .output()
        .expect("cargo new");
    assert!(out.status.success(), "{}", text(&out).1);
    let mut manifest = read(&app, "Cargo.toml");
    if !manifest.contains("[dependencies]") {
        manifest.push_str("\n[dependencies]\n");
    }
    manifest.push_str(&format!(
        "action_event = {{ path = {:?} }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n",
        root().join("action_event").display().to_string()
    ));
    std::fs::write(app.join("Cargo.toml"), manifest).expect("write");
    // The workspace's lock: the same versions as the workspace, so the
    // build needs no network and reuses what the shared target dir holds.
    std::fs::copy(root().join("Cargo.lock"), app.join("Cargo.lock")).expect("copy lock");

    let out = generate(&app, "HelloWorld");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("create  src/events/hello_world.rs"),
        "{stdout}"
    );
    assert!(!stdout.contains("note:"), "the deps are there: {stdout}");

    let out = Command::new("cargo")
        .args(["build", "--offline", "--bin", "poller"])
        .current_dir(&app)
        .env("CARGO_TARGET_DIR", nested_target())
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo build");
    let (_, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the generated project does not build:\n{stderr}"
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("warning")),
        "the generated code has warnings:\n{stderr}"
    );

    let poller = nested_target().join("debug/poller");
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let run = |args: &[&str]| {
        Command::new(&poller)
            .args(args)
            .current_dir(&app)
            .env("ACTION_EVENT_URL", &url)
            .env("RUST_LOG", "info")
            .output()
            .expect("run the generated poller")
    };
    let out = run(&["queue", "hello_world", "name=world"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("Queued hello_world on medium: "),
        "{stdout}"
    );

    let out = run(&["--exit-when-empty"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("HelloWorldEvent processed: name=world (event ")),
        "the template's line:\n{stdout}\n{stderr}"
    );
    // The base's filter ran first, and the poller listed the event at start.
    assert!(
        stderr.contains("[hello_world] attempt 1 params {\"name\":\"world\"}"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "hello_world (gen_app::events::hello_world::HelloWorldEvent) queue=medium retries=10 timeout=none chain=[log_params]"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("Finished processing medium:"), "{stderr}");
}
