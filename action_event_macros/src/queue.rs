//! `queue!(event_name, key = value, ...)`.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};

// Accepted syntax:
//     queue!(hello_world)
//     queue!(hello_world, name = "world", people_ids = [1, 2, 3], meta = { "a": 1 })
//     queue!("hello.world", name = user.name, queue = high)
//     queue!(reminder, id = 5, delay = "30s")          // or `delay = some_duration`
//     queue!(reminder, id = 5, at = some_system_time)
// Reserved keys: `queue` (an identifier, a string, or an expression),
// `delay`, `at`. Every other key is a param; its value is a Rust expression
// (serialized with serde) or a JSON array/object literal.
pub fn expand(input: TokenStream) -> TokenStream {
    match expand_inner(input) {
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

fn split_commas(input: TokenStream) -> Vec<Vec<TokenTree>> {
    let mut parts = vec![Vec::new()];
    for tt in input {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => parts.push(Vec::new()),
            _ => {
                if let Some(last) = parts.last_mut() {
                    last.push(tt)
                }
            }
        }
    }
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

/// An error covering `tokens` (a span cannot be joined on stable Rust, but
/// an error can start at the first token and end at the last).
fn error_at(tokens: &[TokenTree], message: impl std::fmt::Display) -> syn::Error {
    if tokens.is_empty() {
        return syn::Error::new(Span::call_site(), message);
    }
    syn::Error::new_spanned(tokens.iter().cloned().collect::<TokenStream>(), message)
}

fn expand_inner(input: TokenStream) -> syn::Result<TokenStream> {
    let parts = split_commas(input);
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return Err(syn::Error::new(
            Span::call_site(),
            "queue! needs an event name: `queue!(hello_world, name = \"world\")`",
        ));
    };
    let name = match first.as_slice() {
        [TokenTree::Ident(i)] => i.to_string().trim_start_matches("r#").to_string(),
        [TokenTree::Literal(_)] => {
            let lit: syn::LitStr = syn::parse2(first.iter().cloned().collect()).map_err(|_| {
                error_at(
                    &first,
                    "the event name is an identifier or a string: `queue!(hello_world, ...)` or `queue!(\"hello_world\", ...)`",
                )
            })?;
            lit.value()
        }
        [TokenTree::Ident(_), TokenTree::Punct(eq), ..] if eq.as_char() == '=' => {
            return Err(error_at(
                &first,
                "queue! starts with the event name, then the params: `queue!(hello_world, name = \"world\")`",
            ));
        }
        _ => {
            return Err(error_at(
                &first,
                "the first argument of queue! is the event name, an identifier or a string literal: `queue!(hello_world, name = \"world\")`; for a name computed at run time use `QueueRequest::new(name).param(\"key\", value).send()`",
            ));
        }
    };
    if name.is_empty() {
        return Err(error_at(&first, "the event name is empty"));
    }

    let mut calls = TokenStream::new();
    let mut seen: Vec<(String, proc_macro2::Ident)> = Vec::new();
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    for part in parts {
        let (key, value) = match part.as_slice() {
            [TokenTree::Ident(key), TokenTree::Punct(eq), value @ ..]
                if eq.as_char() == '=' && !value.is_empty() =>
            {
                (key.clone(), value.to_vec())
            }
            [TokenTree::Ident(key), TokenTree::Punct(eq)] if eq.as_char() == '=' => {
                push(syn::Error::new(
                    eq.span(),
                    format!("`{key} =` has no value: write `{key} = \"...\"` or remove it"),
                ));
                continue;
            }
            [TokenTree::Ident(key)] => {
                push(syn::Error::new(
                    key.span(),
                    format!(
                        "`{key}` has no value: write `{key} = {key}` to pass a variable, or `{key} = \"...\"`"
                    ),
                ));
                continue;
            }
            _ => {
                push(error_at(
                    &part,
                    "expected `key = value`, e.g. `name = \"world\"` or `people_ids = [1, 2, 3]`",
                ));
                continue;
            }
        };
        let key_str = key.to_string().trim_start_matches("r#").to_string();
        if seen.iter().any(|(k, _)| *k == key_str) {
            push(syn::Error::new(
                key.span(),
                format!("`{key_str}` is given twice in queue!: keep one"),
            ));
            continue;
        }
        let is_time = key_str == "delay" || key_str == "at";
        if is_time && let Some((other, _)) = seen.iter().find(|(k, _)| k == "delay" || k == "at") {
            push(syn::Error::new(
                key.span(),
                format!("`{other}` and `{key_str}` both say when to run: give one of them"),
            ));
            continue;
        }
        seen.push((key_str.clone(), key.clone()));
        let value_ts: TokenStream = value.iter().cloned().collect();
        let vspan = value[0].span();
        match key_str.as_str() {
            "queue" => match value.as_slice() {
                [TokenTree::Ident(q)] => {
                    let q = q.to_string().trim_start_matches("r#").to_string();
                    calls.extend(quote!(.queue(#q)));
                }
                [TokenTree::Literal(_)] => match syn::parse2::<syn::LitStr>(value_ts.clone()) {
                    Ok(l) => calls.extend(quote!(.queue(#l))),
                    Err(_) => push(error_at(
                        &value,
                        "`queue` takes a queue name: `queue = high` or `queue = \"high\"`",
                    )),
                },
                _ => match syn::parse2::<syn::Expr>(value_ts) {
                    Ok(expr) => calls.extend(quote_spanned!(vspan=> .queue(#expr))),
                    Err(e) => push(e),
                },
            },
            "delay" => match syn::parse2::<syn::LitStr>(value_ts.clone()) {
                Ok(l) => match crate::duration::parse("delay", &l) {
                    Ok(_) => calls.extend(quote!(.delay_str(#l))),
                    Err(e) => push(e),
                },
                Err(_) => match syn::parse2::<syn::Expr>(value_ts) {
                    Ok(expr) => calls.extend(quote_spanned!(vspan=> .delay(#expr))),
                    Err(e) => push(e),
                },
            },
            "at" => match syn::parse2::<syn::Expr>(value_ts) {
                Ok(expr) => calls.extend(quote_spanned!(vspan=> .at(#expr))),
                Err(e) => push(e),
            },
            _ => {
                let is_json_literal = matches!(
                    value.as_slice(),
                    [TokenTree::Group(g)] if matches!(g.delimiter(), proc_macro2::Delimiter::Bracket | proc_macro2::Delimiter::Brace)
                );
                if is_json_literal {
                    calls.extend(quote_spanned!(vspan=>
                        .param(#key_str, ::action_event::__private::serde_json::json!(#value_ts))
                    ));
                } else {
                    match syn::parse2::<syn::Expr>(value_ts) {
                        Ok(expr) => {
                            calls.extend(quote_spanned!(vspan=> .param(#key_str, &(#expr))))
                        }
                        Err(e) => push(e),
                    }
                }
            }
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    Ok(quote! {
        ::action_event::__private::QueueRequest::new(#name) #calls .send()
    })
}
