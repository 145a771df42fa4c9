//! Events defined in a library crate are registered in a binary that links
//! it with `use my_events as _;` (inventory's registrations live in the
//! library's object files, which the linker keeps only for crates the
//! binary names).
//!
//! Builds and runs `tests/fixtures/linked_events`, a crate of its own, with
//! its own target directory under this workspace's (kept across runs, so
//! only the first run compiles the dependencies).

use std::path::Path;
use std::process::Command;

#[test]
fn events_of_a_linked_library_crate_are_registered() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linked_events");
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
        .join("linked_events");

    // The same dependency versions as this workspace, without committing a
    // second lock file that would drift from the first.
    let lock = fixture.join("Cargo.lock");
    if !lock.exists() {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"),
            &lock,
        )
        .expect("seed the fixture's Cargo.lock");
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .arg("run")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(fixture.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the fixture failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["linked_hello high my_events::LinkedHelloEvent"],
        "stderr:\n{stderr}"
    );
}
