//! The filter attributes as written: the list of paths in
//! `#[before_filter(..)]`, and the input of a filter attribute that expands
//! on its own.

use proc_macro2::{TokenStream, TokenTree};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Path, Token};

use super::{CONSUMED, Kind};

// Accepted syntax:
//     #[before_filter(path, path, ...)]
//     #[skip_before_filter(path, path, ...)]
// Each path names an `async fn(&mut Context) -> Result<Flow>`.
pub fn parse_list(attr: &Attribute, kind: Kind) -> syn::Result<Vec<Path>> {
    let name = kind.name();
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

/// A filter attribute that expanded on its own.
pub enum Stray {
    /// The marker `#[action_event]` leaves for an attribute it read: nothing
    /// to do.
    Consumed,
    /// On an item: its arguments (read later by `#[action_event]`).
    On {
        args: TokenStream,
        item: Box<syn::Item>,
    },
    /// On tokens that are no item.
    Unparsable(TokenStream),
}

pub fn parse_stray(args: TokenStream, item: TokenStream) -> Stray {
    if let [TokenTree::Ident(i)] = args.clone().into_iter().collect::<Vec<_>>().as_slice()
        && i == CONSUMED
    {
        return Stray::Consumed;
    }
    match syn::parse2(item.clone()) {
        Ok(item) => Stray::On {
            args,
            item: Box::new(item),
        },
        Err(_) => Stray::Unparsable(item),
    }
}
