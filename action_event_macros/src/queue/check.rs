//! Validates `queue!`'s arguments: each key once, `delay` or `at` (not
//! both), reserved keys with values of their kind, every value a Rust
//! expression or a JSON literal, a `delay` string a duration.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};

use super::error_at;
use super::parse::{Input, RawArg};
use crate::errors::Errors;

/// A request that expands without errors.
pub struct Checked {
    pub name: String,
    pub args: Vec<Arg>,
}

/// One argument, typed. `span` is the span of the value's first token.
pub enum Arg {
    /// `queue = high`: the identifier as a name.
    QueueName(String),
    /// `queue = "high"`.
    QueueLit(syn::LitStr),
    /// `queue = some_expression`.
    QueueExpr(syn::Expr, Span),
    /// `delay = "30s"`, checked to be a duration.
    DelayLit(syn::LitStr),
    /// `delay = some_duration`.
    DelayExpr(syn::Expr, Span),
    /// `at = some_system_time`.
    At(syn::Expr, Span),
    /// `key = [..]` or `key = { .. }`: a JSON literal.
    Json {
        key: String,
        value: TokenStream,
        span: Span,
    },
    /// `key = expression`: serialized with serde.
    Param {
        key: String,
        value: syn::Expr,
        span: Span,
    },
}

/// All errors at once, in the order of the arguments.
pub fn check(input: Input) -> syn::Result<Checked> {
    if input.name.is_empty() {
        return Err(error_at(&input.name_tokens, "the event name is empty"));
    }
    let mut errors = Errors::default();
    let mut seen: Vec<String> = Vec::new();
    let mut args = Vec::new();
    for arg in input.args {
        let arg = match arg {
            Ok(arg) => arg,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let key_str = arg.key.to_string().trim_start_matches("r#").to_string();
        if seen.contains(&key_str) {
            errors.push(syn::Error::new(
                arg.key.span(),
                format!("`{key_str}` is given twice in queue!: keep one"),
            ));
            continue;
        }
        let is_time = key_str == "delay" || key_str == "at";
        if is_time && let Some(other) = seen.iter().find(|k| *k == "delay" || *k == "at") {
            errors.push(syn::Error::new(
                arg.key.span(),
                format!("`{other}` and `{key_str}` both say when to run: give one of them"),
            ));
            continue;
        }
        seen.push(key_str.clone());
        match check_value(key_str, &arg) {
            Ok(a) => args.push(a),
            Err(e) => errors.push(e),
        }
    }
    errors.finish()?;
    Ok(Checked {
        name: input.name,
        args,
    })
}

fn check_value(key: String, arg: &RawArg) -> syn::Result<Arg> {
    let value = arg.value.as_slice();
    let value_ts: TokenStream = value.iter().cloned().collect();
    let span = value[0].span();
    Ok(match key.as_str() {
        "queue" => match value {
            [TokenTree::Ident(q)] => {
                Arg::QueueName(q.to_string().trim_start_matches("r#").to_string())
            }
            [TokenTree::Literal(_)] => match syn::parse2::<syn::LitStr>(value_ts) {
                Ok(l) => Arg::QueueLit(l),
                Err(_) => {
                    return Err(error_at(
                        value,
                        "`queue` takes a queue name: `queue = high` or `queue = \"high\"`",
                    ));
                }
            },
            _ => Arg::QueueExpr(syn::parse2(value_ts)?, span),
        },
        "delay" => match syn::parse2::<syn::LitStr>(value_ts.clone()) {
            Ok(l) => {
                crate::duration::parse("delay", &l)?;
                Arg::DelayLit(l)
            }
            Err(_) => Arg::DelayExpr(syn::parse2(value_ts)?, span),
        },
        "at" => Arg::At(syn::parse2(value_ts)?, span),
        _ => {
            let is_json_literal = matches!(
                value,
                [TokenTree::Group(g)] if matches!(g.delimiter(), Delimiter::Bracket | Delimiter::Brace)
            );
            if is_json_literal {
                Arg::Json {
                    key,
                    value: value_ts,
                    span,
                }
            } else {
                Arg::Param {
                    key,
                    value: syn::parse2(value_ts)?,
                    span,
                }
            }
        }
    })
}
