//! The periodic keys of `#[action_event]`, checked at compile time with the
//! crates the runtime computes ticks with: `every` (humantime, more than
//! zero), `cron` (croner), `timezone` (chrono-tz's embedded database) and
//! `missed` (`"once"` or `"skip"`), and how they combine.

use std::str::FromStr;

use proc_macro2::Span;
use syn::LitStr;

/// `every = "5m"`: milliseconds, at least one second.
pub fn every(lit: &LitStr) -> syn::Result<u64> {
    let d = crate::duration::parse("every", lit)?;
    if d.is_zero() {
        return Err(syn::Error::new(
            lit.span(),
            "`every` must be more than zero: write e.g. `every = \"5m\"`",
        ));
    }
    if d.as_millis() < 1000 {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`every = {:?}` is shorter than a second, the finest tick periodic events have: write `every = \"1s\"` or more",
                lit.value()
            ),
        ));
    }
    u64::try_from(d.as_millis())
        .map_err(|_| syn::Error::new(lit.span(), "`every` is too long: write at most a few years"))
}

/// `cron = "0 30 9 * * Mon-Fri"`: five fields, or six with seconds first.
pub fn cron(lit: &LitStr) -> syn::Result<()> {
    croner::Cron::from_str(&lit.value()).map(|_| ()).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!(
                "`cron = {:?}` is not a cron expression: {e}; write `minute hour day-of-month month day-of-week`, optionally with seconds first, e.g. `cron = \"0 30 9 * * Mon-Fri\"`",
                lit.value()
            ),
        )
    })
}

/// `timezone = "Europe/Berlin"`: an IANA zone name.
pub fn timezone(lit: &LitStr) -> syn::Result<()> {
    let v = lit.value();
    if chrono_tz::Tz::from_str(&v).is_ok() {
        return Ok(());
    }
    let hint = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name())
        .find(|name| name.eq_ignore_ascii_case(&v))
        .map(|name| format!("did you mean \"{name}\"? "))
        .unwrap_or_default();
    Err(syn::Error::new(
        lit.span(),
        format!(
            "unknown time zone \"{v}\": {hint}use an IANA name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
        ),
    ))
}

/// `missed = "once" | "skip"`: true for skip.
pub fn missed(lit: &LitStr) -> syn::Result<bool> {
    match lit.value().as_str() {
        "once" => Ok(false),
        "skip" => Ok(true),
        other => Err(syn::Error::new(
            lit.span(),
            format!(
                "unknown missed-tick policy \"{other}\": write `missed = \"once\"` (the default: queue one tick for all the missed ones, then resume) or `missed = \"skip\"` (queue none, resume at the next tick)"
            ),
        )),
    }
}

/// The keys given, for the checks of how they combine.
pub struct Given {
    pub every: Option<Span>,
    pub cron: Option<Span>,
    pub timezone: Option<Span>,
    pub missed: Option<Span>,
    pub base: Option<Span>,
}

/// `every` and `cron` exclude each other; `timezone` needs `cron`;
/// `missed` needs one of them; a base is never queued, so never periodic.
pub fn combine(g: &Given) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    if let (Some(_), Some(cron)) = (g.every, g.cron) {
        errors.push(syn::Error::new(
            cron,
            "`every` and `cron` are both given: a periodic event has one schedule; keep one",
        ));
    }
    if let (Some(tz), None) = (g.timezone, g.cron) {
        errors.push(syn::Error::new(
            tz,
            "`timezone` applies to a `cron` schedule only (`every` counts real time and needs none): add `cron = \"...\"` or remove `timezone`",
        ));
    }
    if let (Some(m), None, None) = (g.missed, g.every, g.cron) {
        errors.push(syn::Error::new(
            m,
            "`missed` applies to periodic events only: add `every = \"...\"` or `cron = \"...\"`, or remove `missed`",
        ));
    }
    if g.base.is_some()
        && let Some(s) = g.every.or(g.cron)
    {
        errors.push(syn::Error::new(
            s,
            "a base event cannot be periodic: it is never queued itself; put `every`/`cron` on an event that extends it",
        ));
    }
    errors
}
