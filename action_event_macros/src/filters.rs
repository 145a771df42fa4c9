//! `#[before_filter(...)]` and `#[skip_before_filter(...)]`.
//!
//! They are read by `#[action_event]`, which removes them from the struct.
//! When one of them expands on its own, it either sits above
//! `#[action_event]` (then it moves itself below it, so the order of the
//! attributes does not matter) or there is no `#[action_event]` at all (an
//! error).

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Path, Token};

/// Which list an attribute feeds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Before,
    Skip,
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

// Accepted syntax:
//     #[before_filter(path, path, ...)]
//     #[skip_before_filter(path, path, ...)]
// Each path names an `async fn(&mut Context) -> Result<Flow>`.
pub fn parse_list(attr: &Attribute, kind: Kind) -> syn::Result<Vec<Path>> {
    let name = match kind {
        Kind::Before => "before_filter",
        Kind::Skip => "skip_before_filter",
    };
    let list = match &attr.meta {
        syn::Meta::List(list) => list,
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!(
                    "`#[{name}]` needs the filters it names: `#[{name}(log_params, load_tenant)]`"
                ),
            ));
        }
    };
    let paths = list
        .parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated)
        .map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("`#[{name}(...)]` takes paths of filter functions, e.g. `#[{name}(log_params, auth::load_user)]`"),
            )
        })?;
    if paths.is_empty() {
        return Err(syn::Error::new(
            list.delimiter.span().join(),
            format!("`#[{name}()]` names no filter: write `#[{name}(log_params)]` or remove it"),
        ));
    }
    Ok(paths.into_iter().collect())
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

pub fn expand_stray(name: &str, args: TokenStream, item: TokenStream) -> TokenStream {
    if let [proc_macro2::TokenTree::Ident(i)] =
        args.clone().into_iter().collect::<Vec<_>>().as_slice()
        && i == CONSUMED
    {
        return TokenStream::new();
    }
    let mut item: syn::Item = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                format!("`#[{name}]` goes on a struct marked `#[action_event(...)]`"),
            );
            let mut out = err.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    let attrs = match &mut item {
        syn::Item::Struct(s) => Some(&mut s.attrs),
        syn::Item::Enum(e) => Some(&mut e.attrs),
        syn::Item::Union(u) => Some(&mut u.attrs),
        syn::Item::Fn(f) => Some(&mut f.attrs),
        _ => None,
    };
    if let Some(attrs) = attrs
        && let Some(pos) = attrs.iter().position(is_action_event)
    {
        // Re-emit ourselves right below `#[action_event]`, so it reads us,
        // together with our siblings that are still above it: moving them
        // all at once, in the order written, keeps the chain in that order
        // (moving one at a time would reverse it, since the topmost
        // attribute expands first).
        let ident = quote::format_ident!("{}", name);
        let me: Attribute = syn::parse_quote!(#[::action_event::#ident(#args)]);
        let mut moved = vec![me];
        let mut i = 0;
        let mut at = pos;
        while i < at {
            if kind_of(&attrs[i]).is_some() {
                moved.push(attrs.remove(i));
                at -= 1;
            } else {
                i += 1;
            }
        }
        for (k, attr) in moved.into_iter().enumerate() {
            attrs.insert(at + 1 + k, attr);
        }
        return item.into_token_stream();
    }
    let err = syn::Error::new(
        proc_macro2::Span::call_site(),
        format!(
            "`#[{name}(...)]` only works together with `#[action_event(...)]` on the same struct: add `#[action_event]` (or `#[action_event(base)]`) to it"
        ),
    );
    let err = err.to_compile_error();
    quote!(#err #item)
}
