//! `queue!` as a `QueueRequest` built with one call per argument.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use super::check::{Arg, Checked};

pub fn expand(req: &Checked) -> TokenStream {
    let name = &req.name;
    let calls = req.args.iter().map(|arg| match arg {
        Arg::QueueName(q) => quote!(.queue(#q)),
        Arg::QueueLit(l) => quote!(.queue(#l)),
        Arg::QueueExpr(expr, span) => quote_spanned!(*span=> .queue(#expr)),
        Arg::DelayLit(l) => quote!(.delay_str(#l)),
        Arg::DelayExpr(expr, span) => quote_spanned!(*span=> .delay(#expr)),
        Arg::At(expr, span) => quote_spanned!(*span=> .at(#expr)),
        Arg::Json { key, value, span } => quote_spanned!(*span=>
            .param(#key, ::action_event::__private::serde_json::json!(#value))
        ),
        Arg::Param { key, value, span } => quote_spanned!(*span=> .param(#key, &(#value))),
    });
    quote! {
        ::action_event::__private::QueueRequest::new(#name) #(#calls)* .send()
    }
}
