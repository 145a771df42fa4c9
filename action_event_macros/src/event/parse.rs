//! `#[action_event(...)]`'s input as written: the arguments, each a known
//! key with its `syn::Meta` (values are typed in `check`), and the item with
//! our filter attributes read off it.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::Path;
use syn::spanned::Spanned;

use crate::filters::{self, Kind};

pub const VALID_KEYS: &str = "`queue = \"high\"`, `name = \"...\"`, `base`, `extends = SomeBase`, `retries = 3`, `timeout = \"30s\"`, `every = \"5m\"`, `cron = \"0 30 9 * * Mon-Fri\"`, `timezone = \"Europe/Berlin\"`, `missed = \"skip\"`";

const KEYS: [&str; 10] = [
    "queue", "name", "base", "extends", "retries", "timeout", "every", "cron", "timezone", "missed",
];

/// The keys of `#[action_event(...)]`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Queue,
    Name,
    Base,
    Extends,
    Retries,
    Timeout,
    Every,
    Cron,
    Timezone,
    Missed,
}

impl Key {
    fn from_ident(i: &str) -> Option<Key> {
        Some(match i {
            "queue" => Key::Queue,
            "name" => Key::Name,
            "base" => Key::Base,
            "extends" => Key::Extends,
            "retries" => Key::Retries,
            "timeout" => Key::Timeout,
            "every" => Key::Every,
            "cron" => Key::Cron,
            "timezone" => Key::Timezone,
            "missed" => Key::Missed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Key::Queue => "queue",
            Key::Name => "name",
            Key::Base => "base",
            Key::Extends => "extends",
            Key::Retries => "retries",
            Key::Timeout => "timeout",
            Key::Every => "every",
            Key::Cron => "cron",
            Key::Timezone => "timezone",
            Key::Missed => "missed",
        }
    }
}

/// One argument: a known key and what was written for it.
pub struct RawArg {
    pub key: Key,
    pub meta: syn::Meta,
}

/// The attribute's arguments and the item it is on.
pub struct Input {
    /// One entry per argument, in the order written: the argument, or why
    /// it is not `key` or `key = value` with a known key.
    pub args: Vec<syn::Result<RawArg>>,
    pub item: Item,
}

/// What `#[action_event]` is on.
pub enum Item {
    Struct(Box<Struct>),
    /// Not a struct: the item (without our filter attributes, which would
    /// each report a second error), the span of its keyword and what it is.
    Other {
        item: Box<syn::Item>,
        span: Span,
        what: &'static str,
    },
    /// Tokens that are no item at all.
    Unparsable {
        tokens: TokenStream,
        error: syn::Error,
    },
}

/// A struct with our filter attributes read and removed.
pub struct Struct {
    pub strukt: syn::ItemStruct,
    /// `#[before_filter(..)]` and `#[skip_before_filter(..)]`, in the order
    /// written.
    pub filter_lists: Vec<syn::Result<(Kind, Vec<Path>)>>,
    /// One marker per filter attribute read, naming it as written, so that
    /// its import counts as used.
    pub consumed: TokenStream,
}

// Accepted syntax (any order, each key at most once):
//     #[action_event]
//     #[action_event(queue = "high", name = "hello", extends = Base, retries = 3, timeout = "30s")]
//     #[action_event(base, queue = "low", retries = 5)]
//     #[action_event(every = "5m", missed = "skip")]
//     #[action_event(cron = "0 30 9 * * Mon-Fri", timezone = "Europe/Berlin")]
pub fn parse(args: TokenStream, item: TokenStream) -> Input {
    Input {
        args: split_args(args).into_iter().map(parse_arg).collect(),
        item: parse_item(item),
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

fn parse_arg(part: TokenStream) -> syn::Result<RawArg> {
    let meta = syn::parse2::<syn::Meta>(part.clone()).map_err(|_| {
        syn::Error::new_spanned(
            part,
            format!("expected `key` or `key = value` in #[action_event]; valid keys: {VALID_KEYS}"),
        )
    })?;
    let path = meta.path();
    match path
        .get_ident()
        .and_then(|i| Key::from_ident(&i.to_string()))
    {
        Some(key) => Ok(RawArg { key, meta }),
        None => {
            let shown = path.to_token_stream().to_string().replace(' ', "");
            let hint = suggest(&shown)
                .map(|k| format!("did you mean `{k}`? "))
                .unwrap_or_default();
            Err(syn::Error::new_spanned(
                path,
                format!("unknown key `{shown}` in #[action_event]; {hint}valid keys: {VALID_KEYS}"),
            ))
        }
    }
}

fn parse_item(item: TokenStream) -> Item {
    let mut strukt: syn::ItemStruct = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Struct(s)) => s,
        Ok(mut other) => {
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
            return Item::Other {
                item: Box::new(other),
                span,
                what,
            };
        }
        Err(error) => {
            return Item::Unparsable {
                tokens: item,
                error,
            };
        }
    };
    let mut filter_lists = Vec::new();
    let mut consumed = TokenStream::new();
    strukt.attrs.retain(|attr| match filters::kind_of(attr) {
        Some(kind) => {
            // Named once more, as it was written, so that its import counts
            // as used (it never expands on its own once read here).
            consumed.extend(filters::consumed_marker(attr.path()));
            filter_lists.push(filters::parse_list(attr, kind).map(|list| (kind, list)));
            false
        }
        None => true,
    });
    Item::Struct(Box::new(Struct {
        strukt,
        filter_lists,
        consumed,
    }))
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
        "interval" | "period" | "repeat" => Some("every"),
        "schedule" | "crontab" => Some("cron"),
        "tz" | "time_zone" | "zone" => Some("timezone"),
        "misfire" | "catch_up" | "catchup" | "missed_ticks" => Some("missed"),
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

#[cfg(test)]
mod tests {
    use super::suggest;

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
