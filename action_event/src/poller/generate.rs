//! `poller generate event HelloWorld`: the original's `script/generate event
//! HelloWorld`, for a Cargo project.
//!
//! Run inside a Cargo project that depends on action_event, it writes
//!
//! ```text
//!       create  src/events/hello_world.rs        the event, from a documented template
//!       create  src/events/application_event.rs the base every event extends (if missing)
//!       update  src/events/mod.rs                `pub mod hello_world;` (created if missing)
//!       update  src/lib.rs                       `pub mod events;` (or src/main.rs)
//!       create  src/bin/poller.rs                the app's poller (if missing)
//!       update  .gitignore                       `tmp/`, `log/`, `action_event.db*` (those missing; created if missing)
//! ```
//!
//! and never overwrites a file (it appends to `.gitignore` the lines it
//! lacks, never one twice): everything is checked before anything is
//! written, so a run that fails changes nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use heck::ToSnakeCase as _;

use crate::Error;

/// The words a module name cannot be (strict and reserved Rust keywords,
/// every edition).
const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// The names one event is known by, derived from what the user typed.
///
/// ```
/// use action_event::poller::EventNames;
/// let n = EventNames::parse("HelloWorld").unwrap();
/// assert_eq!((n.type_name.as_str(), n.module.as_str()), ("HelloWorldEvent", "hello_world"));
/// assert_eq!(EventNames::parse("SendHTMLEmailEvent").unwrap().module, "send_html_email");
/// assert!(EventNames::parse("hello_world").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNames {
    /// The struct: `HelloWorldEvent`.
    pub type_name: String,
    /// The module, file stem and event name: `hello_world`.
    pub module: String,
}

impl EventNames {
    /// Checks a CamelCase name (`HelloWorld` or `HelloWorldEvent`) and
    /// derives the struct and module names the same way `#[action_event]`
    /// derives the event name.
    pub fn parse(name: &str) -> Result<EventNames, Error> {
        let bad = |why: String| Error::Generate(format!("bad event name `{name}`: {why}"));
        if name.is_empty() {
            return Err(bad(
                "it is empty; write it in CamelCase, e.g. `HelloWorld`".into()
            ));
        }
        let mut chars = name.chars();
        let first_upper = chars.next().is_some_and(|c| c.is_ascii_uppercase());
        if !first_upper || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad(format!(
                "write it in CamelCase, letters and digits only, starting with a capital, e.g. `{}`",
                suggest(name)
            )));
        }
        let stem = match name.strip_suffix("Event") {
            Some(stem) if !stem.is_empty() => stem,
            Some(_) => {
                return Err(bad(
                    "name the event, e.g. `HelloWorld` (the `Event` suffix is added)".into(),
                ));
            }
            None => name,
        };
        let module = stem.to_snake_case();
        if KEYWORDS.contains(&module.as_str()) {
            return Err(bad(format!(
                "its module would be `{module}`, a Rust keyword; pick another name"
            )));
        }
        if module == "application" {
            return Err(bad(
                "`ApplicationEvent` is the base every event extends; pick another name".into(),
            ));
        }
        Ok(EventNames {
            type_name: format!("{stem}Event"),
            module,
        })
    }
}

fn suggest(name: &str) -> String {
    let camel: String = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            match cs.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + cs.as_str(),
                None => String::new(),
            }
        })
        .collect();
    if camel.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
        camel
    } else {
        "HelloWorld".into()
    }
}

/// What the generator did to one file, printed like the original
/// (`      create  src/events/hello_world.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// `create`, `update` or `exists`.
    pub verb: &'static str,
    /// The path relative to the project root.
    pub path: String,
}

/// Generates event `name` in the Cargo project at `root`; returns what it
/// did, in order. Fails, changing nothing, on a bad name, on a project it
/// cannot find its way in, or when the event's file exists.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"my-app\"\n").unwrap();
/// std::fs::create_dir(dir.path().join("src")).unwrap();
/// std::fs::write(dir.path().join("src/lib.rs"), "").unwrap();
/// let done = action_event::poller::generate_event(dir.path(), "HelloWorld").unwrap();
/// assert_eq!(done[0].to_string(), "      create  src/events/hello_world.rs");
/// let lib = std::fs::read_to_string(dir.path().join("src/lib.rs")).unwrap();
/// assert!(lib.contains("pub mod events;"));
/// let poller = std::fs::read_to_string(dir.path().join("src/bin/poller.rs")).unwrap();
/// assert!(poller.contains("use my_app as _;"));
/// ```
pub fn generate_event(root: &Path, name: &str) -> Result<Vec<Action>, Error> {
    let names = EventNames::parse(name)?;
    let manifest = root.join("Cargo.toml");
    let cargo_toml = std::fs::read_to_string(&manifest).map_err(|e| {
        Error::Generate(format!(
            "no Cargo project here: cannot read {} ({e}); run it in the root of the app",
            manifest.display()
        ))
    })?;
    let lib_rs = root.join("src/lib.rs");
    let main_rs = root.join("src/main.rs");
    let crate_root = if lib_rs.is_file() {
        lib_rs
    } else if main_rs.is_file() {
        main_rs
    } else {
        return Err(Error::Generate(format!(
            "neither src/lib.rs nor src/main.rs exists in {}",
            root.display()
        )));
    };
    let is_lib = crate_root.ends_with("lib.rs");
    let crate_name = package_name(&cargo_toml)
        .ok_or_else(|| {
            Error::Generate(format!(
                "{} has no `[package]` `name = \"...\"`",
                manifest.display()
            ))
        })?
        .replace('-', "_");

    let event_file = root.join(format!("src/events/{}.rs", names.module));
    let base_file = root.join("src/events/application_event.rs");
    // `src/events.rs` (the newer module layout) is used when it exists.
    let events_mod = if root.join("src/events.rs").is_file() {
        root.join("src/events.rs")
    } else {
        root.join("src/events/mod.rs")
    };
    let poller_file = root.join("src/bin/poller.rs");

    if event_file.exists() {
        return Err(Error::Generate(format!(
            "{} exists; not overwritten (remove it, or pick another name)",
            rel(root, &event_file)
        )));
    }

    // Plan every write first; write nothing until the plan is complete.
    let mut plan: Vec<(&'static str, PathBuf, String)> = Vec::new();
    plan.push(("create", event_file.clone(), event_template(&names)));
    let base_exists = base_file.exists();
    if !base_exists {
        plan.push(("create", base_file.clone(), BASE_TEMPLATE.to_string()));
    }
    let mut new_mods: Vec<&str> = Vec::new();
    if !base_exists {
        new_mods.push("application_event");
    }
    new_mods.push(&names.module);
    match read_if_exists(&events_mod)? {
        Some(text) => {
            if let Some(updated) = add_mods(&text, &new_mods, !base_exists) {
                plan.push(("update", events_mod.clone(), updated));
            }
        }
        None => {
            let mut mods: Vec<&str> = Vec::new();
            if base_exists {
                mods.push("application_event");
            }
            mods.extend(new_mods.iter().copied());
            let mut text = String::from(
                "//! The events of this app, one module each (`poller generate event Name` adds one).\n\n",
            );
            for m in &mods {
                let _ = writeln!(text, "pub mod {m};");
            }
            text.push_str("\npub use application_event::ApplicationEvent;\n");
            plan.push(("create", events_mod.clone(), text));
        }
    }
    let root_text = read_if_exists(&crate_root)?.unwrap_or_default();
    if !declares_mod(&root_text, "events") {
        let mut updated = root_text;
        if updated.trim().is_empty() {
            updated.clear();
        } else {
            if !updated.ends_with('\n') {
                updated.push('\n');
            }
            updated.push('\n');
        }
        updated.push_str("pub mod events;\n");
        plan.push(("update", crate_root.clone(), updated));
    }
    let poller_exists = poller_file.exists();
    if !poller_exists {
        plan.push((
            "create",
            poller_file.clone(),
            poller_template(is_lib, &crate_name),
        ));
    }

    let gitignore = root.join(".gitignore");
    let existing = read_if_exists(&gitignore)?;
    if let Some(text) = add_ignores(existing.as_deref()) {
        let verb = if existing.is_some() {
            "update"
        } else {
            "create"
        };
        plan.push((verb, gitignore, text));
    }

    let mut done = Vec::new();
    for (verb, path, text) in plan {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        if verb == "create" {
            // create_new: a file that appeared since the check is not overwritten.
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            f.write_all(text.as_bytes())
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        } else {
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        done.push(Action {
            verb,
            path: rel(root, &path),
        });
        if path == event_file && base_exists {
            done.push(Action {
                verb: "exists",
                path: rel(root, &base_file),
            });
        }
    }
    if poller_exists {
        done.push(Action {
            verb: "exists",
            path: rel(root, &poller_file),
        });
    }
    Ok(done)
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>12}  {}", self.verb, self.path)
    }
}

/// The notes printed after a run: what the project still lacks, and how to
/// try the new event.
pub(crate) fn notes(root: &Path, names: &EventNames) -> Vec<String> {
    let mut out = Vec::new();
    let cargo_toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let deps = dependency_names(&cargo_toml);
    if !deps.iter().any(|d| d == "action_event") {
        out.push("note: Cargo.toml does not depend on action_event: add `action_event = \"0.1\"` to [dependencies]".into());
    }
    if !deps.iter().any(|d| d == "serde") {
        out.push("note: events derive serde's traits: add `serde = { version = \"1\", features = [\"derive\"] }` to [dependencies]".into());
    }
    out.push(format!(
        "Try it: cargo run --bin poller -- queue {} name=world && cargo run --bin poller -- --exit-when-empty",
        names.module
    ));
    out
}

/// What pollers write in the app's working directory: PID files
/// (`tmp/pids`), daemon logs (`log/`), and the default SQLite broker's file
/// with its `-wal` and `-shm` companions.
const IGNORES: [&str; 3] = ["tmp/", "log/", "action_event.db*"];

/// The `.gitignore` text with the [`IGNORES`] it lacks appended, or `None`
/// when it has them all. A line counts as present written with or without
/// a leading `/` (and, for a directory, without its trailing `/`).
fn add_ignores(text: Option<&str>) -> Option<String> {
    let text = text.unwrap_or("");
    let has = |entry: &str| {
        let bare = entry.trim_end_matches('/');
        text.lines().map(str::trim).any(|l| {
            let l = l.strip_prefix('/').unwrap_or(l);
            l == entry || l == bare
        })
    };
    let missing: Vec<&str> = IGNORES.iter().copied().filter(|e| !has(e)).collect();
    if missing.is_empty() {
        return None;
    }
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# action_event: PID files, daemon logs, the default SQLite broker\n");
    for e in missing {
        out.push_str(e);
        out.push('\n');
    }
    Some(out)
}

fn read_if_exists(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The name a `mod name;` line declares (any visibility), if it is one.
fn mod_decl(line: &str) -> Option<&str> {
    let l = line.trim();
    let l = l
        .strip_prefix("pub(crate) ")
        .or_else(|| l.strip_prefix("pub "))
        .unwrap_or(l);
    let name = l.strip_prefix("mod ")?.strip_suffix(';')?.trim();
    Some(name)
}

/// Whether `text` declares `mod name;` (any visibility).
fn declares_mod(text: &str, name: &str) -> bool {
    text.lines().any(|l| mod_decl(l) == Some(name))
}

/// `text` with `pub mod m;` for each of `mods` it lacks, placed after its
/// last `mod` line (else at the end); `None` when nothing is missing.
fn add_mods(text: &str, mods: &[&str], with_base_use: bool) -> Option<String> {
    let missing: Vec<&str> = mods
        .iter()
        .copied()
        .filter(|m| !declares_mod(text, m))
        .collect();
    let add_use = with_base_use && !text.contains("ApplicationEvent");
    if missing.is_empty() && !add_use {
        return None;
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at = lines
        .iter()
        .rposition(|l| mod_decl(l).is_some())
        .map(|i| i + 1)
        .unwrap_or(lines.len());
    let new: Vec<String> = missing.iter().map(|m| format!("pub mod {m};")).collect();
    lines.splice(at..at, new);
    if add_use {
        lines.push(String::new());
        lines.push("pub use application_event::ApplicationEvent;".into());
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Some(out)
}

/// `name` of the `[package]` table, read line by line (no TOML parser).
fn package_name(cargo_toml: &str) -> Option<String> {
    let mut in_package = false;
    for line in cargo_toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_package = l == "[package]";
            continue;
        }
        if in_package && let Some(rest) = l.strip_prefix("name") {
            let rest = rest.trim_start();
            if let Some(v) = rest.strip_prefix('=') {
                return Some(v.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

/// The keys of `[dependencies]` (and `[dependencies.x]` tables).
fn dependency_names(cargo_toml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in cargo_toml.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            if let Some(name) = l
                .strip_prefix("[dependencies.")
                .and_then(|r| r.strip_suffix(']'))
            {
                out.push(name.trim().trim_matches('"').to_string());
            }
            continue;
        }
        if in_deps && let Some((k, _)) = l.split_once('=') {
            out.push(k.trim().trim_matches('"').to_string());
        }
    }
    out
}

fn event_template(n: &EventNames) -> String {
    let stem = n.type_name.strip_suffix("Event").unwrap_or(&n.type_name);
    EVENT_TEMPLATE
        .replace("{{stem}}", stem)
        .replace("{{type}}", &n.type_name)
        .replace("{{module}}", &n.module)
}

fn poller_template(is_lib: bool, crate_name: &str) -> String {
    if is_lib {
        POLLER_LIB_TEMPLATE.replace("{{crate}}", crate_name)
    } else {
        POLLER_BIN_TEMPLATE.to_string()
    }
}

const EVENT_TEMPLATE: &str = r#"//! `{{module}}`: generated by `poller generate event {{stem}}`.
//!
//! Queue it from anywhere in the app (it returns once the broker stored it):
//!
//! ```ignore
//! // by name, params as `key = value`:
//! queue!({{module}}, name = "world").await?;
//! // typed, checked by the compiler:
//! {{type}} { name: "world".into() }.queue().await?;
//! ```
//!
//! or from the shell: `cargo run --bin poller -- queue {{module}} name=world`.
//! A poller (`cargo run --bin poller`) then runs it: first the before
//! filters of `ApplicationEvent`, then `process` below.

use action_event::prelude::*;

use crate::events::application_event::ApplicationEvent;

/// The `{{module}}` event. Its fields are its params: they travel as JSON,
/// and params that do not fit are an error naming the field.
///
/// Settings go in `#[action_event(...)]`, all optional: `queue = "high"`
/// (default: the base's, else `medium`), `retries = 3` (default 10),
/// `timeout = "30s"`, `name = "other_name"`. Add filters with
/// `#[before_filter(my_filter)]`; skip one of the base's with
/// `#[skip_before_filter(path::to::filter)]`.
#[derive(Debug, Serialize, Deserialize)]
#[action_event(extends = ApplicationEvent)]
pub struct {{type}} {
    /// An example param: replace it with the ones this event needs.
    #[serde(default)]
    pub name: String,
}

impl Process for {{type}} {
    /// The work. An `Err` (or a panic, or a timeout) is retried with
    /// backoff, then moved to the dead letters (`poller dead list`).
    /// Reach the app's environment with `cx.state::<T>()`.
    async fn process(self, cx: &Context) -> Result<()> {
        println!(
            "{{type}} processed: name={} (event {}, attempt {})",
            self.name,
            cx.id(),
            cx.attempt()
        );
        Ok(())
    }
}
"#;

const BASE_TEMPLATE: &str = r#"//! The base every event of this app extends: its before filters run first
//! for every event, and its settings are every event's defaults.

use action_event::prelude::*;

/// Every event of the app extends this base (`#[action_event(extends = ApplicationEvent)]`).
/// Settings here (`#[action_event(base, queue = "low", retries = 5)]`) are
/// inherited; an event may override them.
#[action_event(base)]
#[before_filter(log_params)]
pub struct ApplicationEvent;

/// Runs before every event. Return `Ok(Flow::Halt)` to skip the event
/// (acked and logged, not failed), or store something for the event with
/// `cx.insert(value)`.
pub async fn log_params(cx: &mut Context) -> Result<Flow> {
    eprintln!("[{}] attempt {} params {}", cx.name(), cx.attempt(), cx.params());
    Ok(Flow::Continue)
}
"#;

const POLLER_LIB_TEMPLATE: &str = r#"//! This app's poller: `cargo run --bin poller -- --help`.
//!
//! It must link the app's events: `use {{crate}} as _;` names the library
//! crate, or the linker would drop it, and its events with it, silently.

use {{crate}} as _;

fn main() -> std::process::ExitCode {
    // The app's environment (DB pools, config): handlers reach it with
    // `cx.state::<T>()`. Add values with `State::new().with(value)`.
    let state = action_event::State::new();
    action_event::poller::main(state)
}
"#;

const POLLER_BIN_TEMPLATE: &str = r#"//! This app's poller: `cargo run --bin poller -- --help`.
//!
//! The app is a binary crate, so the poller compiles the events itself.

#[allow(dead_code)]
#[path = "../events/mod.rs"]
mod events;

fn main() -> std::process::ExitCode {
    // The app's environment (DB pools, config): handlers reach it with
    // `cx.state::<T>()`. Add values with `State::new().with(value)`.
    let state = action_event::State::new();
    action_event::poller::main(state)
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = EventNames::parse("HelloWorldEvent").unwrap();
        assert_eq!(n.type_name, "HelloWorldEvent");
        assert_eq!(n.module, "hello_world");
        assert_eq!(EventNames::parse("Ping2").unwrap().module, "ping2");
        for (bad, why) in [
            ("", "empty"),
            ("hello_world", "CamelCase"),
            ("helloWorld", "CamelCase"),
            ("Hello World", "CamelCase"),
            ("Hello-World", "`HelloWorld`"),
            ("Match", "keyword"),
            ("SelfEvent", "keyword"),
            ("Event", "name the event"),
            ("Application", "base"),
        ] {
            let err = EventNames::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn mod_lines() {
        assert!(declares_mod("pub mod events;\n", "events"));
        assert!(declares_mod("  mod events;", "events"));
        assert!(declares_mod("pub(crate) mod events;", "events"));
        assert!(!declares_mod("pub mod events_old;", "events"));
        let text = "//! doc\n\npub mod a;\npub mod b;\n\npub use a::A;\n";
        let out = add_mods(text, &["c"], false).unwrap();
        assert_eq!(
            out,
            "//! doc\n\npub mod a;\npub mod b;\npub mod c;\n\npub use a::A;\n"
        );
        assert_eq!(add_mods(&out, &["c"], false), None);
        let out = add_mods("", &["application_event", "x"], true).unwrap();
        assert!(
            out.contains("pub mod application_event;\npub mod x;"),
            "{out}"
        );
        assert!(out.contains("pub use application_event::ApplicationEvent;"));
    }

    #[test]
    fn gitignore_lines_are_added_once() {
        let created = add_ignores(None).expect("all missing");
        assert!(
            created.ends_with("tmp/\nlog/\naction_event.db*\n"),
            "{created}"
        );
        assert_eq!(add_ignores(Some(&created)), None);
        let updated = add_ignores(Some("/target\n/tmp\nlog/")).expect("one missing");
        assert_eq!(
            updated,
            "/target\n/tmp\nlog/\n# action_event: PID files, daemon logs, the default SQLite broker\naction_event.db*\n"
        );
        assert_eq!(add_ignores(Some(&updated)), None);
    }

    #[test]
    fn cargo_toml() {
        let t = "[package]\nname = \"my-app\"\nversion = \"0.1.0\"\n\n[dependencies]\nserde = { version = \"1\" }\n\n[dependencies.action_event]\npath = \"x\"\n";
        assert_eq!(package_name(t).as_deref(), Some("my-app"));
        assert_eq!(dependency_names(t), vec!["serde", "action_event"]);
    }
}
