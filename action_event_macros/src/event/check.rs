//! Validates `#[action_event]`: each key once with a value of its kind
//! (queue and event names, a duration, a retry count, a base's path), a
//! non-generic struct with named fields (a base may be any struct), filter
//! lists that are lists of paths, one `#[action_event]` per struct.

use heck::ToSnakeCase;
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::spanned::Spanned;
use syn::{Ident, LitInt, LitStr, Path};

use super::parse::{Input, Item, Key, RawArg};
use crate::errors::Errors;
use crate::filters::{self, Kind};

/// The arguments, validated, with the spans of what the user wrote.
#[derive(Default)]
pub struct Args {
    pub queue: Option<LitStr>,
    pub name: Option<LitStr>,
    pub base: Option<Span>,
    pub extends: Option<Path>,
    pub retries: Option<(u32, Span)>,
    /// Milliseconds, at least 1.
    pub timeout: Option<(u64, Span)>,
    /// Milliseconds, at least 1000.
    pub every: Option<(u64, Span)>,
    pub cron: Option<LitStr>,
    pub timezone: Option<LitStr>,
    /// `missed = "skip"` (true) or `"once"` (false).
    pub missed: Option<(bool, Span)>,
}

impl Args {
    /// `every` or `cron` was given.
    pub fn is_periodic(&self) -> bool {
        self.every.is_some() || self.cron.is_some()
    }
}

/// An event (or base) that expands without errors.
pub struct Checked {
    /// The struct without our attributes.
    pub strukt: syn::ItemStruct,
    pub args: Args,
    /// The name it is queued by: `name = "..."`, else from the type's name.
    pub name: String,
    pub is_base: bool,
    pub filters: Vec<Path>,
    pub skips: Vec<Path>,
    pub consumed: TokenStream,
}

/// The errors, and the tokens to emit after them: the user's item (so later
/// code still resolves it), nothing generated, so one mistake gives one
/// message.
pub struct Rejected {
    pub errors: syn::Error,
    pub keep: TokenStream,
}

/// All errors at once: the arguments' in the order written, then the item's.
pub fn check(input: Input) -> Result<Checked, Rejected> {
    let mut errors = Errors::default();
    let mut args = Args::default();
    for arg in input.args {
        if let Err(e) = arg.and_then(|arg| check_arg(&arg, &mut args)) {
            errors.push(e);
        }
    }

    let parsed = match input.item {
        Item::Struct(s) => *s,
        Item::Other { item, span, what } => {
            let e = syn::Error::new(
                span,
                format!(
                    "#[action_event] goes on a struct, not on {what}: an event is a struct whose fields are its params (`struct HelloWorldEvent {{ name: String }}`)"
                ),
            );
            return Err(Rejected {
                errors: errors.and(e),
                keep: item.into_token_stream(),
            });
        }
        Item::Unparsable { tokens, error } => {
            return Err(Rejected {
                errors: errors.and(error),
                keep: tokens,
            });
        }
    };
    let strukt = parsed.strukt;
    let consumed = parsed.consumed;

    let mut filters: Vec<Path> = Vec::new();
    let mut skips: Vec<Path> = Vec::new();
    for list in parsed.filter_lists {
        match list {
            Ok((Kind::Before, list)) => filters.extend(list),
            Ok((Kind::Skip, list)) => skips.extend(list),
            Err(e) => errors.push(e),
        }
    }
    if let Some(attr) = strukt.attrs.iter().find(|a| filters::is_action_event(a)) {
        errors.push(syn::Error::new_spanned(
            attr,
            "#[action_event] is given twice on this struct: merge the keys into one attribute",
        ));
    }

    if strukt.generics.lt_token.is_some() {
        errors.push(syn::Error::new_spanned(
            &strukt.generics,
            "an event struct cannot be generic: each event is one concrete type registered by name; write one struct per event",
        ));
    } else if let Some(w) = &strukt.generics.where_clause {
        errors.push(syn::Error::new_spanned(
            w,
            "an event struct cannot have a `where` clause: each event is one concrete type registered by name",
        ));
    }

    for e in super::periodic::combine(&super::periodic::Given {
        every: args.every.map(|(_, s)| s),
        cron: args.cron.as_ref().map(|l| l.span()),
        timezone: args.timezone.as_ref().map(|l| l.span()),
        missed: args.missed.map(|(_, s)| s),
        base: args.base,
    }) {
        errors.push(e);
    }

    let is_base = args.base.is_some();
    if is_base {
        if let Some(name) = &args.name {
            errors.push(syn::Error::new(
                name.span(),
                "a base event has no name: it is never queued or processed itself; remove `name`",
            ));
        }
    } else {
        // Params are a JSON object: serde reads a unit or tuple struct from
        // something else, so every run would fail with bad params.
        match &strukt.fields {
            syn::Fields::Named(_) => {}
            syn::Fields::Unit => errors.push(syn::Error::new_spanned(
                &strukt.ident,
                format!(
                    "an event's params are a JSON object, which a unit struct cannot read: write `struct {} {{}}` for an event without params (or `#[action_event(base)]` for a base)",
                    strukt.ident
                ),
            )),
            syn::Fields::Unnamed(f) => errors.push(syn::Error::new_spanned(
                f,
                "an event's params are a JSON object, so its fields have names: write `struct HelloWorldEvent { name: String }`, not a tuple struct",
            )),
        }
    }

    if let Err(e) = errors.finish() {
        return Err(Rejected {
            errors: e,
            keep: quote! { #strukt const _: () = { #consumed }; },
        });
    }
    let name = args
        .name
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| event_name(&strukt.ident));
    Ok(Checked {
        strukt,
        args,
        name,
        is_base,
        filters,
        skips,
        consumed,
    })
}

/// Checks one argument and records it in `out`. A key counts as given once
/// it was given validly (or, for `base`, at all).
fn check_arg(arg: &RawArg, out: &mut Args) -> syn::Result<()> {
    let meta = &arg.meta;
    let path = meta.path();
    let key = arg.key.as_str();
    let present = match arg.key {
        Key::Queue => out.queue.is_some(),
        Key::Name => out.name.is_some(),
        Key::Base => out.base.is_some(),
        Key::Extends => out.extends.is_some(),
        Key::Retries => out.retries.is_some(),
        Key::Timeout => out.timeout.is_some(),
        Key::Every => out.every.is_some(),
        Key::Cron => out.cron.is_some(),
        Key::Timezone => out.timezone.is_some(),
        Key::Missed => out.missed.is_some(),
    };
    if present {
        return Err(syn::Error::new_spanned(
            path,
            format!("`{key}` is given twice in #[action_event]: keep one"),
        ));
    }
    let example = match arg.key {
        Key::Queue => "queue = \"high\"",
        Key::Name => "name = \"hello_world\"",
        Key::Base => "base",
        Key::Extends => "extends = ApplicationEvent",
        Key::Retries => "retries = 3",
        Key::Timeout => "timeout = \"30s\"",
        Key::Every => "every = \"5m\"",
        Key::Cron => "cron = \"0 30 9 * * Mon-Fri\"",
        Key::Timezone => "timezone = \"Europe/Berlin\"",
        Key::Missed => "missed = \"skip\"",
    };
    if arg.key == Key::Base {
        // Recorded even when written wrong, so that the checks that depend
        // on it (a unit struct is fine for a base) add no second error.
        out.base = Some(path.span());
        return match meta {
            syn::Meta::Path(_) => Ok(()),
            _ => Err(syn::Error::new_spanned(
                meta,
                "`base` takes no value: write `#[action_event(base)]`",
            )),
        };
    }
    let value = match meta {
        syn::Meta::NameValue(nv) => &nv.value,
        syn::Meta::Path(_) => {
            return Err(syn::Error::new_spanned(
                path,
                format!("`{key}` needs a value: `{example}`"),
            ));
        }
        syn::Meta::List(l) => {
            return Err(syn::Error::new_spanned(
                meta,
                format!(
                    "`{key}(...)` is not the syntax: write `{example}`{}",
                    if l.tokens.is_empty() { "" } else { " with `=`" }
                ),
            ));
        }
    };
    match arg.key {
        Key::Queue
        | Key::Name
        | Key::Timeout
        | Key::Every
        | Key::Cron
        | Key::Timezone
        | Key::Missed => {
            let lit = match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => s.clone(),
                other => return Err(not_a_string(key, other, example)),
            };
            match arg.key {
                Key::Queue => {
                    check_queue_name(&lit)?;
                    out.queue = Some(lit);
                }
                Key::Name => {
                    check_event_name(&lit)?;
                    out.name = Some(lit);
                }
                Key::Every => {
                    let ms = super::periodic::every(&lit)?;
                    out.every = Some((ms, lit.span()));
                }
                Key::Cron => {
                    super::periodic::cron(&lit)?;
                    out.cron = Some(lit);
                }
                Key::Timezone => {
                    super::periodic::timezone(&lit)?;
                    out.timezone = Some(lit);
                }
                Key::Missed => {
                    let skip = super::periodic::missed(&lit)?;
                    out.missed = Some((skip, lit.span()));
                }
                _ => {
                    let d = crate::duration::parse("timeout", &lit)?;
                    if d.is_zero() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`timeout` must be more than zero; leave it out for no timeout",
                        ));
                    }
                    let ms = d.as_millis().clamp(1, u64::MAX as u128) as u64;
                    out.timeout = Some((ms, lit.span()));
                }
            }
        }
        Key::Retries => match value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(i),
                ..
            }) => {
                let n = parse_u32(i)?;
                out.retries = Some((n, i.span()));
            }
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) if s.value().trim().parse::<u32>().is_ok() => {
                return Err(syn::Error::new(
                    s.span(),
                    format!(
                        "`retries` takes a number, not a string: write `retries = {}`",
                        s.value().trim()
                    ),
                ));
            }
            syn::Expr::Unary(syn::ExprUnary {
                op: syn::UnOp::Neg(_),
                ..
            }) => {
                return Err(syn::Error::new_spanned(
                    value,
                    "`retries` cannot be negative: write `retries = 0` to never retry",
                ));
            }
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "`retries` takes a whole number: `retries = 3` (0 means never retry)",
                ));
            }
        },
        Key::Extends | Key::Base => match value {
            syn::Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
                out.extends = Some(p.path.clone())
            }
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => {
                let shown = match syn::parse_str::<Path>(&s.value()) {
                    Ok(p) => p.to_token_stream().to_string().replace(' ', ""),
                    Err(_) => "ApplicationEvent".to_string(),
                };
                return Err(syn::Error::new(
                    s.span(),
                    format!(
                        "`extends` takes the base's type, not a string: write `extends = {shown}`"
                    ),
                ));
            }
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "`extends` takes the path of a base event type: `extends = ApplicationEvent`",
                ));
            }
        },
    }
    Ok(())
}

/// The error for `queue = high`, `timeout = 30`, `name = hello`: shows the
/// value quoted when that is what the user meant.
fn not_a_string(key: &str, value: &syn::Expr, example: &str) -> syn::Error {
    let meant = match value {
        syn::Expr::Path(p) => p.path.get_ident().map(|i| format!("{key} = \"{i}\"")),
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) if key == "timeout" => Some(format!("{key} = \"{}s\"", i.base10_digits())),
        _ => None,
    };
    let msg = match meant {
        Some(m) => format!("`{key}` takes a string literal: write `{m}`"),
        None => format!("`{key}` takes a string literal: `{example}`"),
    };
    syn::Error::new_spanned(value, msg)
}

fn parse_u32(i: &LitInt) -> syn::Result<u32> {
    if i.base10_digits().starts_with('-') {
        return Err(syn::Error::new(
            i.span(),
            "`retries` cannot be negative: write `retries = 0` to never retry",
        ));
    }
    if !i.suffix().is_empty() {
        return Err(syn::Error::new(
            i.span(),
            format!(
                "`retries` takes a plain number without a suffix: `retries = {}`",
                i.base10_digits()
            ),
        ));
    }
    i.base10_parse::<u32>().map_err(|_| {
        syn::Error::new(
            i.span(),
            format!("`retries = {}` is out of range: use 0 to {}", i, u32::MAX),
        )
    })
}

fn check_queue_name(lit: &LitStr) -> syn::Result<()> {
    let v = lit.value();
    let ok = !v.is_empty()
        && v.len() <= 200
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            format!(
                "bad queue name \"{v}\": use letters, digits, `_` and `-`, e.g. `queue = \"high\"`"
            ),
        ))
    }
}

fn check_event_name(lit: &LitStr) -> syn::Result<()> {
    let v = lit.value();
    let ok = !v.is_empty()
        && v.len() <= 200
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            format!(
                "bad event name \"{v}\": use letters, digits, `_`, `.` and `-`, e.g. `name = \"hello_world\"`"
            ),
        ))
    }
}

/// `HelloWorldEvent` and `HelloWorld` are both `hello_world`.
fn event_name(ident: &Ident) -> String {
    let s = ident.to_string();
    let s = s.strip_prefix("r#").unwrap_or(&s);
    let stem = match s.strip_suffix("Event") {
        Some(stem) if !stem.is_empty() => stem,
        _ => s,
    };
    stem.to_snake_case()
}

#[cfg(test)]
mod tests {
    use super::event_name;
    use quote::format_ident;

    #[test]
    fn names_drop_event_and_snake_case() {
        assert_eq!(event_name(&format_ident!("HelloWorldEvent")), "hello_world");
        assert_eq!(event_name(&format_ident!("HelloWorld")), "hello_world");
        assert_eq!(event_name(&format_ident!("Event")), "event");
        assert_eq!(
            event_name(&format_ident!("SendHTMLEmailEvent")),
            "send_html_email"
        );
    }
}
