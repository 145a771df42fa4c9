//! `queue!`'s input as written: the event name and the `key = value`
//! arguments, each kept as its tokens (the values are typed in `check`).

use proc_macro2::{Delimiter, Ident, Span, TokenStream, TokenTree};
use syn::parse::{ParseStream, Parser};

use super::error_at;

/// `queue!(name, key = value, ...)` split into its parts.
pub struct Input {
    /// The event's name as written: an identifier (without `r#`) or the
    /// value of a string literal.
    pub name: String,
    /// The tokens of the name, for errors about it.
    pub name_tokens: Vec<TokenTree>,
    /// One entry per argument after the name, in the order written: the
    /// argument, or the error that says why it is not `key = value`.
    pub args: Vec<syn::Result<RawArg>>,
}

/// One `key = value` argument; `value` is never empty.
pub struct RawArg {
    pub key: Ident,
    pub value: Vec<TokenTree>,
}

/// Splits and reads the input. An error here is about the name (then the
/// arguments are not looked at); errors about single arguments are kept in
/// [`Input::args`].
pub fn parse(input: TokenStream) -> syn::Result<Input> {
    let mut parts = split(input).into_iter();
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
    let args = parts.map(|part| parse_arg(&part)).collect();
    Ok(Input {
        name,
        name_tokens: first,
        args,
    })
}

fn parse_arg(part: &[TokenTree]) -> syn::Result<RawArg> {
    match part {
        [TokenTree::Ident(key), TokenTree::Punct(eq), value @ ..]
            if eq.as_char() == '=' && !value.is_empty() =>
        {
            Ok(RawArg {
                key: key.clone(),
                value: value.to_vec(),
            })
        }
        [TokenTree::Ident(key), TokenTree::Punct(eq)] if eq.as_char() == '=' => {
            Err(syn::Error::new(
                eq.span(),
                format!("`{key} =` has no value: write `{key} = \"...\"` or remove it"),
            ))
        }
        [TokenTree::Ident(key)] => Err(syn::Error::new(
            key.span(),
            format!(
                "`{key}` has no value: write `{key} = {key}` to pass a variable, or `{key} = \"...\"`"
            ),
        )),
        _ => Err(error_at(
            part,
            "expected `key = value`, e.g. `name = \"world\"` or `people_ids = [1, 2, 3]`",
        )),
    }
}

/// Splits the input into the name and the arguments. The name ends at the
/// first comma. An argument `key = value` ends where Rust's grammar ends its
/// value, at a comma outside it: commas inside a turbofish
/// (`HashMap::<u8, u8>::new()`) or a closure's parameters (`|a, b| a + b`)
/// belong to the value. What does not read as `key = value` ends at the next
/// comma, and `parse_arg` or `check` says what is wrong with it. A trailing
/// comma is allowed.
fn split(input: TokenStream) -> Vec<Vec<TokenTree>> {
    let tokens: Vec<TokenTree> = input.into_iter().collect();
    let mut parts: Vec<Vec<TokenTree>> = Vec::new();
    let mut at = 0;
    loop {
        let rest = &tokens[at..];
        let len = if parts.is_empty() {
            comma_at(rest)
        } else {
            arg_len(rest).unwrap_or_else(|| comma_at(rest))
        };
        parts.push(rest[..len].to_vec());
        at += len;
        if at >= tokens.len() {
            break;
        }
        at += 1; // the comma
    }
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}

fn is_comma(tt: &TokenTree) -> bool {
    matches!(tt, TokenTree::Punct(p) if p.as_char() == ',')
}

/// The index of the first comma in `tokens` (or their length).
fn comma_at(tokens: &[TokenTree]) -> usize {
    tokens.iter().position(is_comma).unwrap_or(tokens.len())
}

/// The length of the `key = value` argument `tokens` start with, if they
/// start with one that is followed by a comma or the end.
fn arg_len(tokens: &[TokenTree]) -> Option<usize> {
    let [TokenTree::Ident(_), TokenTree::Punct(eq), value @ ..] = tokens else {
        return None;
    };
    if eq.as_char() != '=' {
        return None;
    }
    let ends_at = |n: usize| n == value.len() || value.get(n).is_some_and(is_comma);
    // A JSON array or object literal: `ids = [1, 2]`, `meta = { "a": 1 }`.
    if let Some(TokenTree::Group(g)) = value.first()
        && matches!(g.delimiter(), Delimiter::Bracket | Delimiter::Brace)
        && ends_at(1)
    {
        return Some(3);
    }
    let n = expr_len(value)?;
    ends_at(n).then_some(2 + n)
}

/// How many of `tokens` the Rust expression they start with takes.
fn expr_len(tokens: &[TokenTree]) -> Option<usize> {
    let stream: TokenStream = tokens.iter().cloned().collect();
    let rest = (|input: ParseStream| {
        input.parse::<syn::Expr>()?;
        input.parse::<TokenStream>()
    })
    .parse2(stream)
    .ok()?;
    let n = tokens.len().checked_sub(rest.into_iter().count())?;
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::split;
    use quote::quote;

    fn parts(input: proc_macro2::TokenStream) -> Vec<String> {
        split(input)
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .collect::<proc_macro2::TokenStream>()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn commas_inside_values_do_not_split() {
        let got = parts(quote!(
            stats,
            map = HashMap::<u8, u8>::new(),
            add = |a, b| a + b,
            lt = a < b,
            gt = c > d,
            ids = [1, 2],
            v = vec![1, 2],
            s = format!("{}", x),
        ));
        assert_eq!(
            got,
            [
                "stats",
                "map = HashMap :: < u8 , u8 > :: new ()",
                "add = | a , b | a + b",
                "lt = a < b",
                "gt = c > d",
                "ids = [1 , 2]",
                "v = vec ! [1 , 2]",
                "s = format ! (\"{}\" , x)",
            ]
        );
    }

    #[test]
    fn what_is_not_key_value_ends_at_the_next_comma() {
        assert_eq!(parts(quote!(a, "x", b =, c)), ["a", "\"x\"", "b =", "c"]);
        assert_eq!(parts(quote!(a,, b = 1)), ["a", "", "b = 1"]);
        assert_eq!(
            parts(quote!(a::<x, y>, b = 1)),
            ["a :: < x", "y >", "b = 1"]
        );
        assert!(parts(quote!()).is_empty());
    }
}
