//! The README's first command, run in a clean copy of the tree, prints
//! `hello world` through a real poller on the embedded default broker.

use std::path::Path;
use std::process::Command;

fn first_command(readme: &str) -> String {
    let block = readme
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README has a ```sh block");
    block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a command")
        .to_string()
}

#[test]
fn readme_first_command_prints_hello_world() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let cmd = first_command(&readme);
    assert!(cmd.starts_with("cargo "), "{cmd}");

    // A clean copy: the files git knows (tracked and new), nothing else.
    let files = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .expect("git ls-files");
    assert!(files.status.success());
    let clone = tempfile::tempdir().expect("tempdir");
    for f in files.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let rel = Path::new(std::str::from_utf8(f).expect("utf-8 path"));
        let from = root.join(rel);
        if !from.is_file() {
            continue; // deleted in the work tree
        }
        let to = clone.path().join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &to).expect("copy");
    }

    let out = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .current_dir(clone.path())
        .env_remove("ACTION_EVENT_URL")
        // Its own target dir: the outer cargo may hold the lock on ours.
        // Shared with tests/generate.rs, which builds the same dependencies.
        .env("CARGO_TARGET_DIR", root.join("target/nested"))
        .output()
        .expect("run the README's first command");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "`{cmd}` failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l == "hello world"),
        "`{cmd}` printed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("Processing queues: high,medium,low"),
        "{stderr}"
    );
    assert!(
        clone.path().join("action_event.db").exists(),
        "the default is sqlite://action_event.db"
    );
}
