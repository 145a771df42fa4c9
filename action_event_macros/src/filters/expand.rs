//! A stray filter attribute moves itself below `#[action_event]`.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::Attribute;

use super::check::{Checked, attrs_mut};
use super::kind_of;

pub fn expand(name: &str, checked: Checked) -> TokenStream {
    let (args, mut item, mut at) = match checked {
        Checked::Nothing => return TokenStream::new(),
        Checked::Move { args, item, at } => (args, item, at),
    };
    let Some(attrs) = attrs_mut(&mut item) else {
        return item.into_token_stream();
    };
    // Re-emit ourselves right below `#[action_event]`, so it reads us,
    // together with our siblings that are still above it: moving them
    // all at once, in the order written, keeps the chain in that order
    // (moving one at a time would reverse it, since the topmost
    // attribute expands first).
    let ident = quote::format_ident!("{}", name);
    let me: Attribute = syn::parse_quote!(#[::action_event::#ident(#args)]);
    let mut moved = vec![me];
    let mut i = 0;
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
    item.into_token_stream()
}
