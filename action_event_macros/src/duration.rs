//! Durations written as strings (`timeout = "30s"`, `delay = "5m"`), checked
//! at compile time so that a typo is an error at the literal.

use std::time::Duration;

use syn::LitStr;

/// Parses `lit` with humantime; the error, at the literal, names `key`, says
/// what is wrong in a few words and shows valid values.
pub fn parse(key: &str, lit: &LitStr) -> syn::Result<Duration> {
    humantime::parse_duration(&lit.value()).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!(
                "`{key} = {:?}` is not a duration: {}; write e.g. \"500ms\", \"30s\", \"5m\" or \"1h 30m\"",
                lit.value(),
                problem(&e)
            ),
        )
    })
}

/// humantime's own messages list every unit and its variations; this says
/// only what is wrong.
fn problem(e: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    match e {
        E::UnknownUnit { unit, .. } if unit.is_empty() => {
            "a number needs a unit (`ms`, `s`, `m`, `h`, `d`)".to_string()
        }
        E::UnknownUnit { unit, .. } => {
            format!("unknown unit `{unit}` (use `ms`, `s`, `m`, `h` or `d`)")
        }
        E::NumberExpected(_) => "a number is expected before each unit".to_string(),
        E::InvalidCharacter(_) => "only digits, units and spaces are allowed".to_string(),
        E::NumberOverflow => "the number is too large".to_string(),
        E::Empty => "it is empty".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn message(s: &str) -> String {
        let lit = syn::LitStr::new(s, proc_macro2::Span::call_site());
        parse("timeout", &lit).unwrap_err().to_string()
    }

    #[test]
    fn messages_say_what_is_wrong() {
        assert!(message("30 parsecs").contains("unknown unit `parsecs`"));
        assert!(message("30").contains("needs a unit"), "{}", message("30"));
        assert!(message("").contains("empty"));
        assert!(
            message("s").contains("number is expected"),
            "{}",
            message("s")
        );
        assert!(
            message("3,5s").contains("only digits"),
            "{}",
            message("3,5s")
        );
    }
}
