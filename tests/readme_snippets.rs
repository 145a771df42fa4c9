//! Every ```rust block of README.md compiles: this test extracts them into a
//! crate of their own and runs `cargo check` on it; a block that does not
//! compile fails the test with the README line of each error.
//!
//! # The convention
//!
//! Each ```rust block (and the ```toml block of the app's dependencies) has
//! an HTML comment on the line above it (invisible on GitHub) that says how
//! to check it; a block without one fails the test:
//!
//! | comment | the block is |
//! |---|---|
//! | `<!-- check: manifest -->` (a ```toml block) | the `[dependencies]`/`[dev-dependencies]` of the snippet crate, so a snippet can use only what the README tells the app to depend on (the `action_event` line becomes a path dependency on this repository) |
//! | `<!-- check: lib -->` | a module of the snippet crate's library, as is (the README's own events); its items are re-exported at the crate root |
//! | `<!-- check: bin -->` | a binary of the snippet crate (`src/bin/`), as is |
//! | `<!-- check: test -->` | an integration test of the snippet crate (`tests/`), as is |
//! | `<!-- check: async-fn -->` | statements: the body of an `async fn` returning `action_event::anyhow::Result<()>`, with `action_event::prelude::*` in scope (fragments like `queue!(...).await?;`) |
//! | `<!-- check: file examples/NAME.rs -->` | that file verbatim (cargo builds the examples); nothing is generated |
//!
//! `, with: events` after the kind (`<!-- check: bin, with: events -->`)
//! also puts the snippet crate's items in scope (`use my_events::*;`): the
//! README's `lib` blocks and [`FIXTURE`], the app code the README talks
//! about without showing it (`send_email`, `reminder`, `signup`).
//!
//! The snippet crate is named `my_events`, the name the README gives the
//! app's events crate. Warnings are errors. Each generated file keeps the
//! README's line numbers (the wrapper sits on the first line, blank lines
//! pad the rest), so cargo's errors are printed with `README.md:LINE`.
//!
//! The crate is written to `target/tmp/readme_snippets` (look at it when a
//! check fails) and checked with `target/nested` as its target directory,
//! shared with tests/readme.rs and tests/generate.rs: warm, it takes a few
//! seconds. `a_broken_snippet_fails_naming_its_readme_line` checks a copy
//! of the README with a line that does not compile, to show the check fails
//! and names that line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The app code the README's snippets use without defining it: two more
/// events and the `signup` function of the testing section.
const FIXTURE: &str = r#"//! What the README's snippets use without showing it.
use action_event::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
#[action_event]
pub struct SendEmailEvent {
    pub people_ids: Vec<u64>,
}

impl Process for SendEmailEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[action_event]
pub struct ReminderEvent {
    pub id: u64,
}

impl Process for ReminderEvent {
    async fn process(self, _cx: &Context) -> Result<()> {
        Ok(())
    }
}

/// App code that queues an event.
pub async fn signup(name: &str) -> Result<()> {
    queue!(hello_world, name = name).await?;
    Ok(())
}
"#;

/// A fenced block of the README.
#[derive(Debug)]
struct Block {
    /// The info string after the fence: `rust`, `toml`, `sh`, ...
    lang: String,
    /// The line of the opening fence (1-based).
    fence_line: usize,
    /// The text after `check:` in the comment above the fence, if any.
    check: Option<String>,
    body: String,
}

impl Block {
    /// The README line of the block's first line of code.
    fn first_line(&self) -> usize {
        self.fence_line + 1
    }
}

fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        // Fences may be indented (a block inside a list item).
        let Some(info) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let check = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- check:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(|c| c.trim().to_string());
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim_start().starts_with("```"))
            .unwrap_or_else(|| panic!("README.md:{}: a fence that is never closed", i + 1));
        let mut body = lines[i + 1..end].join("\n");
        body.push('\n');
        out.push(Block {
            lang: info.trim().to_string(),
            fence_line: i + 1,
            check,
            body,
        });
        i = end + 1;
    }
    out
}

/// A block's file in the snippet crate: the wrapper on the first line, the
/// block at its README line numbers, then the wrapper's end.
fn padded(first: &str, block: &Block, last: &str) -> String {
    let mut s = String::from(first);
    s.push('\n');
    for _ in 2..block.first_line() {
        s.push('\n');
    }
    s.push_str(&block.body);
    s.push_str(last);
    s
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `[dependencies]` of the README's manifest block, with `action_event`
/// pointing at this repository.
fn manifest(deps: &str) -> String {
    let action_event = root().join("action_event");
    let mut found = false;
    let deps: Vec<String> = deps
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("action_event") && l.contains('=') {
                found = true;
                format!("action_event = {{ path = {:?} }}", action_event.display())
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(
        found,
        "README.md's `<!-- check: manifest -->` block has no `action_event = ...` line"
    );
    format!(
        "[package]\nname = \"my_events\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         # Not a member of the action_event workspace around it.\n[workspace]\n\n{}\n",
        deps.join("\n")
    )
}

/// What a snippet crate file is: its path in the crate and its text.
struct Generated {
    path: String,
    text: String,
}

/// The file a `rust` block becomes, or `None` for `file` blocks (checked
/// here, compiled by cargo as the example they are).
fn generate(block: &Block, check: &str, lib_mods: &mut Vec<String>) -> Option<Generated> {
    let mut parts = check.split(',').map(str::trim);
    let kind = parts.next().unwrap_or_default();
    let mut with_events = false;
    for extra in parts {
        assert_eq!(
            extra, "with: events",
            "README.md:{}: unknown option `{extra}` in `<!-- check: {check} -->`",
            block.fence_line
        );
        with_events = true;
    }
    let line = block.fence_line;
    let stem = format!("readme_{line}");
    let allow = "#[allow(unused_imports)]";
    let generated = match kind {
        "lib" => {
            assert!(!with_events, "README.md:{line}: a lib block is the events");
            lib_mods.push(stem.clone());
            Generated {
                path: format!("src/{stem}.rs"),
                text: padded("", block, ""),
            }
        }
        "bin" | "test" => {
            let first = if with_events {
                format!("#![deny(warnings)] {allow} use my_events::*;")
            } else {
                "#![deny(warnings)]".to_string()
            };
            let dir = if kind == "bin" { "src/bin" } else { "tests" };
            Generated {
                path: format!("{dir}/{stem}.rs"),
                text: padded(&first, block, ""),
            }
        }
        "async-fn" => {
            lib_mods.push(stem.clone());
            let events = if with_events {
                format!("{allow} use crate::*; ")
            } else {
                String::new()
            };
            let first = format!(
                "{allow} use action_event::prelude::*; {events}\
                 pub async fn {stem}() -> action_event::anyhow::Result<()> {{"
            );
            Generated {
                path: format!("src/{stem}.rs"),
                text: padded(&first, block, "Ok(())\n}\n"),
            }
        }
        _ => {
            let file = kind.strip_prefix("file ").unwrap_or_else(|| {
                panic!(
                    "README.md:{line}: unknown check `{check}` \
                     (lib, bin, test, async-fn, file PATH; see tests/readme_snippets.rs)"
                )
            });
            let text = std::fs::read_to_string(root().join(file.trim()))
                .unwrap_or_else(|e| panic!("README.md:{line}: {file}: {e}"));
            assert!(
                text == block.body,
                "README.md:{line}: the block is not {file} verbatim: copy the file into it"
            );
            return None;
        }
    };
    Some(generated)
}

/// Checks the rust blocks of `readme` in the snippet crate
/// `target/tmp/<name>`: `Err` has cargo's errors, named by README line.
fn check(readme: &str, name: &str) -> Result<(), String> {
    let blocks = blocks(readme);

    let mut deps = None;
    let mut files = Vec::new();
    let mut lib_mods = Vec::new();
    let mut checked = Vec::new();
    for block in &blocks {
        let check = block.check.as_deref();
        if block.lang == "toml" && check == Some("manifest") {
            assert!(deps.is_none(), "README.md: two `check: manifest` blocks");
            deps = Some(block.body.clone());
            continue;
        }
        // `rust`, and `rust,ignore` or `rust,no_run` too: no block escapes.
        if block.lang.split(',').next() != Some("rust") {
            continue;
        }
        let check = check.unwrap_or_else(|| {
            panic!(
                "README.md:{}: a ```rust block without a `<!-- check: ... -->` comment above it \
                 (see tests/readme_snippets.rs for the kinds)",
                block.fence_line
            )
        });
        checked.push(block.fence_line);
        files.extend(generate(block, check, &mut lib_mods));
    }
    let deps = deps.expect("README.md has a ```toml block marked `<!-- check: manifest -->`");
    assert!(files.len() >= 5, "generated: {}", files.len());

    let mut lib = String::from(
        "//! README.md's rust blocks, generated by tests/readme_snippets.rs.\n\
         #![deny(warnings)]\n\nmod fixture;\npub use fixture::*;\n",
    );
    for m in &lib_mods {
        writeln!(lib, "mod {m};\n#[allow(unused_imports)]\npub use {m}::*;").expect("write");
    }
    files.push(Generated {
        path: "src/lib.rs".into(),
        text: lib,
    });
    files.push(Generated {
        path: "src/fixture.rs".into(),
        text: FIXTURE.into(),
    });
    files.push(Generated {
        path: "Cargo.toml".into(),
        text: manifest(&deps),
    });

    // A fresh crate each run (the target dir keeps the dependencies warm).
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    for sub in ["src", "tests"] {
        let sub = dir.join(sub);
        if sub.exists() {
            std::fs::remove_dir_all(&sub).expect("remove the last run's snippets");
        }
    }
    for f in &files {
        let path = dir.join(&f.path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, &f.text).expect("write a snippet");
    }
    // The workspace's versions, which the shared target dir has built.
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).expect("copy Cargo.lock");

    let target: PathBuf = root().join("target/nested");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["check", "--offline", "--lib", "--bins", "--tests"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("run cargo check");
    if out.status.success() {
        return Ok(());
    }

    // Name the README lines: each generated file has the README's numbering.
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for f in &files {
        if f.path.ends_with(".rs") && f.path != "src/lib.rs" && f.path != "src/fixture.rs" {
            stderr = stderr.replace(&format!("{}:", f.path), "README.md:");
        }
    }
    let mut failed = Vec::new();
    for rest in stderr.split("README.md:").skip(1) {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = n.parse::<usize>()
            && let Some(b) = checked.iter().rev().find(|&&b| b < n)
            && !failed.contains(b)
        {
            failed.push(*b);
        }
    }
    let listed: Vec<String> = failed.iter().map(|l| format!("README.md:{l}")).collect();
    Err(format!(
        "README.md's ```rust blocks at {} do not compile (generated crate: {}):\n{stderr}",
        if listed.is_empty() {
            "(see below)".to_string()
        } else {
            listed.join(", ")
        },
        dir.display()
    ))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

#[test]
fn every_rust_block_of_the_readme_compiles() {
    if let Err(e) = check(&readme(), "readme_snippets") {
        panic!("{e}");
    }
}

/// The check can fail, and says where: the README with a line that does
/// not compile added at the top of its first `async-fn` block.
#[test]
fn a_broken_snippet_fails_naming_its_readme_line() {
    let readme = readme();
    let mut lines: Vec<&str> = readme.lines().collect();
    let comment = lines
        .iter()
        .position(|l| l.starts_with("<!-- check: async-fn"))
        .expect("README.md has an async-fn block");
    let fence = comment + 2; // 1-based: the comment, then the fence
    let broken = fence + 1;
    lines.insert(fence, "let _: u8 = \"not a number\";");
    let readme = lines.join("\n") + "\n";

    let err = check(&readme, "readme_snippets_broken").expect_err("a broken snippet must fail");
    assert!(
        err.contains(&format!("blocks at README.md:{fence} do not compile")),
        "{err}"
    );
    assert!(err.contains(&format!("--> README.md:{broken}:")), "{err}");
    assert!(err.contains("mismatched types"), "{err}");
}
