//! A filter attribute that expands on its own must sit on a struct that
//! also has `#[action_event]`: then it moves below it (see `expand`).

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

use super::is_action_event;
use super::parse::Stray;

/// What to do with a stray filter attribute.
pub enum Checked {
    /// Nothing: it was read already.
    Nothing,
    /// Move it (and its siblings above `#[action_event]`) below the
    /// `#[action_event]` at `at` in the item's attributes.
    Move {
        args: TokenStream,
        item: Box<syn::Item>,
        at: usize,
    },
}

/// An error at the attribute, and the item to emit after it.
pub struct Rejected {
    pub error: syn::Error,
    pub keep: TokenStream,
}

pub fn check(name: &str, stray: Stray) -> Result<Checked, Rejected> {
    let (args, mut item) = match stray {
        Stray::Consumed => return Ok(Checked::Nothing),
        Stray::On { args, item } => (args, item),
        Stray::Unparsable(tokens) => {
            return Err(Rejected {
                error: syn::Error::new(
                    Span::call_site(),
                    format!("`#[{name}]` goes on a struct marked `#[action_event(...)]`"),
                ),
                keep: tokens,
            });
        }
    };
    if let Some(attrs) = attrs_mut(&mut item)
        && let Some(at) = attrs.iter().position(is_action_event)
    {
        return Ok(Checked::Move { args, item, at });
    }
    Err(Rejected {
        error: syn::Error::new(
            Span::call_site(),
            format!(
                "`#[{name}(...)]` only works together with `#[action_event(...)]` on the same struct: add `#[action_event]` (or `#[action_event(base)]`) to it"
            ),
        ),
        keep: item.into_token_stream(),
    })
}

/// The attributes of the items an attribute can sit on with
/// `#[action_event]` (which then reports the wrong kind of item).
pub fn attrs_mut(item: &mut syn::Item) -> Option<&mut Vec<syn::Attribute>> {
    match item {
        syn::Item::Struct(s) => Some(&mut s.attrs),
        syn::Item::Enum(e) => Some(&mut e.attrs),
        syn::Item::Union(u) => Some(&mut u.attrs),
        syn::Item::Fn(f) => Some(&mut f.attrs),
        _ => None,
    }
}
