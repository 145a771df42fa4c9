//! `queue!(event_name, key = value, ...)`: [`parse`] splits the input into
//! the name and `key = value` arguments, [`check`] validates them into a
//! [`check::Checked`] request, [`expand`] writes the `QueueRequest` call.
//!
//! Accepted syntax:
//! ```text
//! queue!(hello_world)
//! queue!(hello_world, name = "world", people_ids = [1, 2, 3], meta = { "a": 1 })
//! queue!("hello.world", name = user.name, queue = high)
//! queue!(reminder, id = 5, delay = "30s")          // or `delay = some_duration`
//! queue!(reminder, id = 5, at = some_system_time)
//! queue!(stats, map = HashMap::<u8, u8>::new(), sum = v.iter().fold(0, |a, b| a + b))
//! ```
//! Reserved keys: `queue` (an identifier, a string, or an expression),
//! `delay`, `at`. Every other key is a param; its value is a Rust expression
//! (serialized with serde) or a JSON array/object literal. Arguments are
//! separated by the commas at the top level of the values as Rust reads
//! them: a comma inside a turbofish (`::<u8, u8>`) or a closure's
//! parameters (`|a, b|`) is part of the value.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::quote;

mod check;
mod expand;
mod parse;

pub fn expand(input: TokenStream) -> TokenStream {
    match parse::parse(input)
        .and_then(check::check)
        .map(|checked| expand::expand(&checked))
    {
        Ok(t) => t,
        Err(e) => {
            let err = e.to_compile_error();
            // Still a future of the right type, so one mistake gives one error.
            quote! {{
                #err
                ::action_event::__private::QueueRequest::new("").send()
            }}
        }
    }
}

/// An error covering `tokens` (a span cannot be joined on stable Rust, but
/// an error can start at the first token and end at the last).
fn error_at(tokens: &[TokenTree], message: impl std::fmt::Display) -> syn::Error {
    if tokens.is_empty() {
        return syn::Error::new(Span::call_site(), message);
    }
    syn::Error::new_spanned(tokens.iter().cloned().collect::<TokenStream>(), message)
}
