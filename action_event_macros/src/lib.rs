//! Implementation detail of the `action_event` crate: depend on `action_event`
//! and use the macros it re-exports.
//!
//! Each macro is a folder of three stages: `parse.rs` reads what was written
//! into a parsed struct (keeping spans), `check.rs` validates it into a
//! checked struct, `expand.rs` writes the code from that; the folder's
//! `mod.rs` runs them and documents the accepted syntax. Every mistake is a
//! `syn::Error` at the offending tokens, all of them at once, in the order
//! written (`errors::Errors`).
//!
//! - `event/`: `#[action_event(...)]` (with the filter attributes it reads)
//! - `filters/`: `#[before_filter]` / `#[skip_before_filter]` on their own
//! - `queue/`: `queue!(name, key = value, ...)`

use proc_macro::TokenStream;

mod duration;
mod errors;
mod event;
mod filters;
mod queue;

// Documented where it is re-exported, in the `action_event` crate (whose
// doctests can use the runtime).
#[proc_macro_attribute]
pub fn action_event(args: TokenStream, item: TokenStream) -> TokenStream {
    event::expand(args.into(), item.into()).into()
}

// Documented in the `action_event` crate.
#[proc_macro_attribute]
pub fn before_filter(args: TokenStream, item: TokenStream) -> TokenStream {
    filters::expand_stray(filters::Kind::Before, args.into(), item.into()).into()
}

// Documented in the `action_event` crate.
#[proc_macro_attribute]
pub fn skip_before_filter(args: TokenStream, item: TokenStream) -> TokenStream {
    filters::expand_stray(filters::Kind::Skip, args.into(), item.into()).into()
}

// Documented in the `action_event` crate.
#[proc_macro]
pub fn queue(input: TokenStream) -> TokenStream {
    queue::expand(input.into()).into()
}
