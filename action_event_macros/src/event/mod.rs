//! `#[action_event(...)]`: [`parse`] reads the arguments and the struct
//! (with its `#[before_filter]`/`#[skip_before_filter]` attributes),
//! [`check`] validates them into a [`check::Checked`] event, [`expand`]
//! writes the struct, its impl and its registration.
//!
//! Accepted syntax (any order, each key at most once):
//! ```text
//! #[action_event]
//! #[action_event(queue = "high", name = "hello", extends = Base, retries = 3, timeout = "30s")]
//! #[action_event(base, queue = "low", retries = 5)]
//! #[action_event(every = "5m", missed = "skip")]              // periodic
//! #[action_event(cron = "0 30 9 * * Mon-Fri", timezone = "Europe/Berlin")]
//! ```

use proc_macro2::TokenStream;

mod check;
mod expand;
mod parse;
mod periodic;

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    match check::check(parse::parse(args, item)) {
        Ok(event) => expand::expand(&event),
        Err(check::Rejected { errors, keep }) => {
            let mut out = errors.to_compile_error();
            out.extend(keep);
            out
        }
    }
}
