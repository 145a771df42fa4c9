//! `#[action_event(...)]`: parse the arguments and the struct, check them,
//! expand to the struct plus its registration.

use heck::ToSnakeCase;
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, LitInt, LitStr, Path};

use crate::filters::{self, Kind};

const VALID_KEYS: &str = "`queue = \"high\"`, `name = \"...\"`, `base`, `extends = SomeBase`, `retries = 3`, `timeout = \"30s\"`";

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
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

// Accepted syntax (any order, each key at most once):
//     #[action_event]
//     #[action_event(queue = "high", name = "hello", extends = Base, retries = 3, timeout = "30s")]
//     #[action_event(base, queue = "low", retries = 5)]
fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    let mut out = Args::default();
    let parser = syn::meta::parser(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let dup = |present: bool| -> syn::Result<()> {
            if present {
                Err(meta.error(format!("`{key}` is given twice")))
            } else {
                Ok(())
            }
        };
        match key.as_str() {
            "base" => {
                dup(out.base.is_some())?;
                if meta.input.peek(syn::Token![=]) || meta.input.peek(syn::token::Paren) {
                    return Err(meta.error("`base` takes no value: write `#[action_event(base)]`"));
                }
                out.base = Some(meta.path.span());
            }
            "queue" | "name" | "timeout" => {
                dup(match key.as_str() {
                    "queue" => out.queue.is_some(),
                    "name" => out.name.is_some(),
                    _ => out.timeout.is_some(),
                })?;
                let example = match key.as_str() {
                    "queue" => "queue = \"high\"",
                    "name" => "name = \"hello_world\"",
                    _ => "timeout = \"30s\"",
                };
                let value = meta
                    .value()
                    .map_err(|_| meta.error(format!("`{key}` needs a value: `{example}`")))?;
                let expr: syn::Expr = value.parse()?;
                let lit = match &expr {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => s.clone(),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            format!("`{key}` takes a string literal: `{example}`"),
                        ));
                    }
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
                        let d = humantime::parse_duration(&lit.value()).map_err(|e| {
                            syn::Error::new(
                                lit.span(),
                                format!(
                                    "`timeout = \"{}\"` is not a duration ({e}): write e.g. \"500ms\", \"30s\", \"5m\" or \"1h\"",
                                    lit.value()
                                ),
                            )
                        })?;
                        if d.is_zero() {
                            return Err(syn::Error::new(
                                lit.span(),
                                "`timeout` must be more than zero; leave it out for no timeout",
                            ));
                        }
                        out.timeout =
                            Some((d.as_millis().min(u64::MAX as u128) as u64, lit.span()));
                    }
                }
            }
            "retries" => {
                dup(out.retries.is_some())?;
                let value = meta
                    .value()
                    .map_err(|_| meta.error("`retries` needs a value: `retries = 3`"))?;
                let expr: syn::Expr = value.parse()?;
                match &expr {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Int(i),
                        ..
                    }) => {
                        let n = parse_u32(i)?;
                        out.retries = Some((n, i.span()));
                    }
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "`retries` takes a whole number: `retries = 3` (0 means never retry)",
                        ));
                    }
                }
            }
            "extends" => {
                dup(out.extends.is_some())?;
                let value = meta.value().map_err(|_| {
                    meta.error("`extends` needs a base type: `extends = ApplicationEvent`")
                })?;
                let expr: syn::Expr = value.parse()?;
                match expr {
                    syn::Expr::Path(p) if p.qself.is_none() => out.extends = Some(p.path),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "`extends` takes the path of a base event type, not a string: `extends = ApplicationEvent`",
                        ));
                    }
                }
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown key `{}` in #[action_event]; valid keys: {VALID_KEYS}",
                    meta.path.to_token_stream().to_string().replace(' ', "")
                )));
            }
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push(e);
    }
    out
}

fn parse_u32(i: &LitInt) -> syn::Result<u32> {
    if !i.suffix().is_empty() {
        return Err(syn::Error::new(
            i.span(),
            "`retries` takes a plain number without a suffix: `retries = 3`",
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
        Ok(other) => {
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
            out.extend(item);
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
    strukt.attrs.retain(|attr| match filters::kind_of(attr) {
        Some(kind) => {
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
        errors.push(syn::Error::new(
            attr.span(),
            "#[action_event] is given twice on this struct: merge the keys into one attribute",
        ));
    }

    if strukt.generics.lt_token.is_some() || strukt.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            strukt.generics.span(),
            "an event struct cannot be generic: each event is one concrete type registered by name",
        ));
    }

    let is_base = args.base.is_some();
    if is_base && let Some(name) = &args.name {
        errors.push(syn::Error::new(
            name.span(),
            "a base event has no name: it is never queued or processed itself; remove `name`",
        ));
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
            checks.extend(quote_spanned! {p.span()=>
                const _: () = #private::assert_base::<#p>();
            });
            quote! {
                ::core::option::Option::Some(#private::ParentDecl {
                    type_name: ::core::any::type_name::<#p>,
                    type_id: ::core::any::TypeId::of::<#p>,
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
        let call = quote_spanned! {path.span()=>
            #private::call_filter(#path, cx)
        };
        wrappers.extend(quote! {
            fn #wrapper<'a>(
                cx: &'a mut #private::Context,
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
                const NAME: &'static str = #name;
            }
        });
        checks.extend(quote_spanned! {ident.span()=>
            const _: () = #private::assert_params::<#ident>();
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
        return quote! { #errors #strukt };
    }

    quote! {
        #strukt

        #impls

        #[doc(hidden)]
        const _: () = {
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
