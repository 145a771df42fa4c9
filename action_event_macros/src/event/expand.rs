//! A checked `#[action_event]` as code: the struct, its `Event` (or
//! `BaseEvent`) impl, and its registration, a const `EventDecl` submitted to
//! the runtime's inventory.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::Ident;
use syn::spanned::Spanned;

use super::check::Checked;

pub fn expand(ev: &Checked) -> TokenStream {
    let Checked {
        strukt,
        args,
        name,
        is_base,
        filters,
        skips,
        consumed,
    } = ev;
    let ident = &strukt.ident;
    let private = quote!(::action_event::__private);
    let queue = match &args.queue {
        Some(l) => quote!(::core::option::Option::Some(#l)),
        None => quote!(::core::option::Option::None),
    };
    let retries = match args.retries {
        Some((n, _)) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };
    let timeout = match args.timeout {
        Some((ms, _)) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };

    let periodic = if args.is_periodic() && !*is_base {
        let every = args.every.map(|(ms, _)| ms).unwrap_or(0);
        let cron = args.cron.as_ref().map(|l| l.value()).unwrap_or_default();
        let tz = args
            .timezone
            .as_ref()
            .map(|l| l.value())
            .unwrap_or_default();
        let skip = args.missed.map(|(skip, _)| skip).unwrap_or(false);
        // Spanned on the struct's name: a periodic event without `Default`
        // is reported there, once.
        let params = quote_spanned! {ident.span()=>
            ::action_event::__private::periodic_params::<#ident>
        };
        quote! {
            ::core::option::Option::Some(#private::PeriodicDecl {
                every_ms: #every,
                cron: #cron,
                timezone: #tz,
                skip_missed: #skip,
                params: #params,
            })
        }
    } else {
        quote!(::core::option::Option::None)
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

    let (impls, handler) = if *is_base {
        (
            quote! {
                impl #private::BaseEvent for #ident {}
            },
            quote!(::core::option::Option::None),
        )
    } else {
        (
            quote_spanned! {ident.span()=>
                impl #private::Event for #ident {
                    const NAME: &'static ::core::primitive::str = #name;
                }
            },
            quote! {
                ::core::option::Option::Some(#private::Handler {
                    decode: #private::decode::<#ident>,
                    process: #private::process::<#ident>,
                })
            },
        )
    };

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
                    periodic: #periodic,
                }
            }
        };
    }
}
