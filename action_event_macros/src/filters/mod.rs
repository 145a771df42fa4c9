//! `#[before_filter(...)]` and `#[skip_before_filter(...)]`.
//!
//! They are read by `#[action_event]`, which removes them from the struct
//! (with [`parse_list`]). When one of them expands on its own, it is
//! [`parse`]d, [`check`]ed: it either sits above `#[action_event]` (then it
//! [`expand`]s to the item with itself moved below it, so the order of the
//! attributes does not matter) or there is no `#[action_event]` at all (an
//! error).

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, Path};

mod check;
mod expand;
mod parse;

pub use parse::parse_list;

/// Which list an attribute feeds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Before,
    Skip,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Before => "before_filter",
            Kind::Skip => "skip_before_filter",
        }
    }
}

/// Whether `attr` is one of ours, and which.
pub fn kind_of(attr: &Attribute) -> Option<Kind> {
    let last = attr.path().segments.last()?;
    if last.ident == "before_filter" {
        Some(Kind::Before)
    } else if last.ident == "skip_before_filter" {
        Some(Kind::Skip)
    } else {
        None
    }
}

pub fn is_action_event(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "action_event")
}

/// The argument of the marker below.
const CONSUMED: &str = "__action_event_consumed";

/// `#[path(__action_event_consumed)] const _: () = ();`: emitted by
/// `#[action_event]` for each filter attribute it read, so that the user's
/// import of `before_filter` is used. It expands to nothing.
pub fn consumed_marker(path: &Path) -> TokenStream {
    let marker = proc_macro2::Ident::new(CONSUMED, proc_macro2::Span::call_site());
    quote! {
        #[#path(#marker)]
        const _: () = ();
    }
}

/// `#[before_filter]` or `#[skip_before_filter]` (`kind`) expanding on its
/// own.
pub fn expand_stray(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let name = kind.name();
    match check::check(name, parse::parse_stray(args, item)) {
        Ok(checked) => expand::expand(name, checked),
        Err(check::Rejected { error, keep }) => {
            let mut out = error.to_compile_error();
            out.extend(keep);
            out
        }
    }
}
