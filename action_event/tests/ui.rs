//! Compile-time behaviour of the macros: every mistake a user can make has a
//! case under `tests/ui/fail/` with the exact message it gets, reviewed; the
//! forms that must compile are under `tests/ui/pass/`.
//!
//! Regenerate the `.stderr` files only with `TRYBUILD=overwrite cargo test
//! -p action_event --test ui`, then read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
