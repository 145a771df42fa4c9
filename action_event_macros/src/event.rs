//! `#[action_event(...)]`: parse the arguments and the struct, check them,
//! expand to the struct plus its registration.

use heck::ToSnakeCase;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, LitInt, LitStr, Path};

use crate::filters::{self, Kind};

const VALID_KEYS: &str = "`queue = \"high\"`, `name = \"...\"`, `base`, `extends = SomeBase`, `retries = 3`, `timeout = \"30s\"`";

const KEYS: [&str; 6] = ["queue", "name", "base", "extends", "retries", "timeout"];

/// The arguments, with the spans of what the user wrote.
#[derive(Default)]
struct Args {
    queue: Option<LitStr>,
    name: Option<LitStr>,
    base: Option<Span>,
    extends: Option<Path>,
    retries: Option<(u32, Span)>,
    timeout: Option<(u64, Span)>,
}

/// Collects every error instead of stopping at the first.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

/// Splits `a = 1, b, c = "x"` at its top-level commas. Each part is parsed on
/// its own, so that one bad key does not hide the errors of the others.
fn split_args(args: TokenStream) -> Vec<TokenStream> {
    let mut parts = vec![TokenStream::new()];
    for tt in args {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => parts.push(TokenStream::new()),
            _ => {
                if let Some(last) = parts.last_mut() {
                    last.extend([tt]);
                }
            }
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

// Accepted syntax (any order, each key at most once):
//     #[action_event]
//     #[action_event(queue = "high", name = "hello", extends = Base, retries = 3, timeout = "30s")]
//     #[action_event(base, queue = "low", retries = 5)]
fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    let mut out = Args::default();
    for part in split_args(args) {
        let meta = match syn::parse2::<syn::Meta>(part.clone()) {
            Ok(m) => m,
            Err(_) => {
                errors.push(syn::Error::new_spanned(
                    part,
                    format!("expected `key` or `key = value` in #[action_event]; valid keys: {VALID_KEYS}"),
                ));
                continue;
            }
        };
        if let Err(e) = parse_arg(&meta, &mut out) {
            errors.push(e);
        }
    }
    out
}

fn parse_arg(meta: &syn::Meta, out: &mut Args) -> syn::Result<()> {
    let path = meta.path();
    let key = match path.get_ident() {
        Some(i) if KEYS.contains(&i.to_string().as_str()) => i.to_string(),
        _ => {
            let shown = path.to_token_stream().to_string().replace(' ', "");
            let hint = suggest(&shown)
                .map(|k| format!("did you mean `{k}`? "))
                .unwrap_or_default();
            return Err(syn::Error::new_spanned(
                path,
                format!("unknown key `{shown}` in #[action_event]; {hint}valid keys: {VALID_KEYS}"),
            ));
        }
    };
    let present = match key.as_str() {
        "queue" => out.queue.is_some(),
        "name" => out.name.is_some(),
        "base" => out.base.is_some(),
        "extends" => out.extends.is_some(),
        "retries" => out.retries.is_some(),
        _ => out.timeout.is_some(),
    };
    if present {
        return Err(syn::Error::new_spanned(
            path,
            format!("`{key}` is given twice in #[action_event]: keep one"),
        ));
    }
    let example = match key.as_str() {
        "queue" => "queue = \"high\"",
        "name" => "name = \"hello_world\"",
        "base" => "base",
        "extends" => "extends = ApplicationEvent",
        "retries" => "retries = 3",
        _ => "timeout = \"30s\"",
    };
    if key == "base" {
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
    match key.as_str() {
        "queue" | "name" | "timeout" => {
            let lit = match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => s.clone(),
                other => return Err(not_a_string(&key, other, example)),
            };
            match key.as_str() {
                "queue" => {
                    check_queue_name(&lit)?;
                    out.queue = Some(lit);
                }
                "name" => {
                    check_event_name(&lit)?;
                    out.name = Some(lit);
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
        "retries" => match value {
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
        _ => match value {
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

/// A valid key close to what was written: a typo, or a word from another
/// job framework.
fn suggest(written: &str) -> Option<&'static str> {
    let w = written.to_ascii_lowercase();
    let alias = match w.as_str() {
        "retry" | "max_retries" | "attempts" | "max_attempts" | "retry_count" => Some("retries"),
        "parent" | "inherits" | "extend" | "super" | "base_event" => Some("extends"),
        "queue_name" | "priority" | "queue_as" => Some("queue"),
        "abstract" => Some("base"),
        "deadline" | "time_limit" | "timeout_secs" => Some("timeout"),
        "event" | "event_name" | "rename" => Some("name"),
        _ => None,
    };
    alias.or_else(|| {
        KEYS.iter()
            .map(|k| (distance(&w, k), *k))
            .filter(|(d, k)| *d <= 2 && *d < k.len())
            .min()
            .map(|(_, k)| k)
    })
}

/// Levenshtein distance, for key suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
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

pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);

    let mut strukt: syn::ItemStruct = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Struct(s)) => s,
        Ok(mut other) => {
            // Our filter attributes go with the error: left on the item they
            // would each report a second error.
            let attrs = match &mut other {
                syn::Item::Enum(e) => Some(&mut e.attrs),
                syn::Item::Union(u) => Some(&mut u.attrs),
                syn::Item::Fn(f) => Some(&mut f.attrs),
                syn::Item::Impl(i) => Some(&mut i.attrs),
                syn::Item::Trait(t) => Some(&mut t.attrs),
                _ => None,
            };
            if let Some(attrs) = attrs {
                attrs.retain(|a| filters::kind_of(a).is_none());
            }
            let (span, what) = match &other {
                syn::Item::Enum(e) => (e.enum_token.span, "an enum"),
                syn::Item::Union(u) => (u.union_token.span, "a union"),
                syn::Item::Fn(f) => (f.sig.fn_token.span, "a function"),
                syn::Item::Impl(i) => (i.impl_token.span, "an impl block"),
                syn::Item::Trait(t) => (t.trait_token.span, "a trait"),
                other => (other.span(), "this item"),
            };
            errors.push(syn::Error::new(
                span,
                format!(
                    "#[action_event] goes on a struct, not on {what}: an event is a struct whose fields are its params (`struct HelloWorldEvent {{ name: String }}`)"
                ),
            ));
            let mut out = errors.0.map(|e| e.to_compile_error()).unwrap_or_default();
            out.extend(other.into_token_stream());
            return out;
        }
        Err(e) => {
            errors.push(e);
            let mut out = errors.0.map(|e| e.to_compile_error()).unwrap_or_default();
            out.extend(item);
            return out;
        }
    };

    // Our own attributes are read here and removed from the struct.
    let mut filters: Vec<Path> = Vec::new();
    let mut skips: Vec<Path> = Vec::new();
    let mut consumed = TokenStream::new();
    strukt.attrs.retain(|attr| match filters::kind_of(attr) {
        Some(kind) => {
            // Named once more, as it was written, so that its import counts
            // as used (it never expands on its own once read here).
            consumed.extend(filters::consumed_marker(attr.path()));
            match filters::parse_list(attr, kind) {
                Ok(list) if kind == Kind::Before => filters.extend(list),
                Ok(list) => skips.extend(list),
                Err(e) => errors.push(e),
            }
            false
        }
        None => true,
    });
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

    let ident = &strukt.ident;
    let name = args
        .name
        .as_ref()
        .map(|l| l.value())
        .unwrap_or_else(|| event_name(ident));

    let private = quote!(::action_event::__private);
    let opt_str = |v: &Option<LitStr>| match v {
        Some(l) => quote!(::core::option::Option::Some(#l)),
        None => quote!(::core::option::Option::None),
    };
    let queue = opt_str(&args.queue);
    let retries = match args.retries {
        Some((n, _)) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let timeout = match args.timeout {
        Some((ms, _)) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };

    let mut checks = TokenStream::new();
    let parent = match &args.extends {
        Some(p) => {
            // The user's path appears once (a typo is one error); the check
            // that it is a base carries its span (the error lands on it).
            let alias = Ident::new("__ActionEventParent", p.span());
            checks.extend(quote! {
                type #alias = #p;
            });
            checks.extend(quote_spanned! {p.span()=>
                const _: () = ::action_event::__private::assert_base::<#alias>();
            });
            quote! {
                ::core::option::Option::Some(#private::ParentDecl {
                    type_name: ::core::any::type_name::<#alias>,
                    type_id: ::core::any::TypeId::of::<#alias>,
                })
            }
        }
        None => quote!(::core::option::Option::None),
    };

    let mut wrappers = TokenStream::new();
    let mut filter_decls = Vec::new();
    for (i, path) in filters.iter().enumerate() {
        let wrapper = format_ident!("__action_event_filter_{}", i);
        let shown = path.to_token_stream().to_string().replace(' ', "");
        // Every token of the call carries the path's span, so a filter with
        // the wrong signature is reported at the path the user wrote, once.
        let call = quote_spanned! {path.span()=>
            ::action_event::__private::call_filter(#path, __action_event_cx)
        };
        wrappers.extend(quote! {
            fn #wrapper<'a>(
                __action_event_cx: &'a mut #private::Context,
            ) -> #private::BoxFuture<'a, #private::Result<#private::Flow>> {
                #call
            }
        });
        filter_decls.push(quote! {
            #private::FilterDecl {
                path: #shown,
                id: || #private::type_name_of(&#path),
                run: #wrapper,
            }
        });
    }
    let skip_decls = skips.iter().map(|path| {
        let shown = path.to_token_stream().to_string().replace(' ', "");
        quote! {
            #private::SkipDecl {
                path: #shown,
                id: || #private::type_name_of(&#path),
            }
        }
    });

    let mut impls = TokenStream::new();
    let handler = if is_base {
        impls.extend(quote! {
            impl #private::BaseEvent for #ident {}
        });
        quote!(::core::option::Option::None)
    } else {
        impls.extend(quote_spanned! {ident.span()=>
            impl #private::Event for #ident {
                const NAME: &'static ::core::primitive::str = #name;
            }
        });
        quote! {
            ::core::option::Option::Some(#private::Handler {
                decode: #private::decode::<#ident>,
                process: #private::process::<#ident>,
            })
        }
    };

    let errors = errors.0.map(|e| e.to_compile_error());
    if errors.is_some() {
        // Emit the struct (so later code still resolves it) and the errors,
        // nothing else: one mistake, one message.
        return quote! { #errors #strukt const _: () = { #consumed }; };
    }

    quote! {
        #strukt

        #impls

        #[doc(hidden)]
        const _: () = {
            #consumed
            #wrappers
            #checks
            #private::inventory::submit! {
                #private::EventDecl {
                    type_name: ::core::any::type_name::<#ident>,
                    type_id: ::core::any::TypeId::of::<#ident>,
                    name: #name,
                    base: #is_base,
                    parent: #parent,
                    queue: #queue,
                    retries: #retries,
                    timeout_ms: #timeout,
                    filters: &[#(#filter_decls),*],
                    skips: &[#(#skip_decls),*],
                    handler: #handler,
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::{event_name, suggest};
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

    #[test]
    fn keys_are_suggested() {
        assert_eq!(suggest("queu"), Some("queue"));
        assert_eq!(suggest("retry"), Some("retries"));
        assert_eq!(suggest("timout"), Some("timeout"));
        assert_eq!(suggest("parent"), Some("extends"));
        assert_eq!(suggest("priority"), Some("queue"));
        assert_eq!(suggest("colour"), None);
        assert_eq!(suggest("x"), None);
    }
}
