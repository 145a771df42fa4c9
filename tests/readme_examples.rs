//! The README and `examples/` agree: the README's embedding section shows
//! `examples/embedded_poller.rs` verbatim (so the snippet compiles, and CI
//! runs it), and its Examples section lists every example.

use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn readme_embedding_snippet_is_examples_embedded_poller() {
    let readme = read("README.md");
    let example = read("examples/embedded_poller.rs");
    let block = format!("```rust\n{example}```\n");
    assert!(
        readme.contains(&block),
        "README.md must show examples/embedded_poller.rs verbatim in a ```rust block \
         (section `Run the poller inside your app`): copy the file there"
    );
}

#[test]
fn readme_lists_every_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let readme = read("README.md");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("an entry of examples/").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path
                .file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            assert!(
                readme.contains(&format!("[`{name}`](examples/{name}.rs)")),
                "README.md's Examples section does not list examples/{name}.rs"
            );
            names.push(name);
        }
    }
    assert!(names.len() >= 5, "examples found: {names:?}");
}
