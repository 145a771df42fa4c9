//! When the ticks of a periodic event fall: [`Schedule::next_after`] and
//! [`Schedule::latest_at_or_before`], in milliseconds since the Unix epoch.
//!
//! - `every = "5m"`: ticks at the multiples of the period counted from the
//!   Unix epoch (00:00:00 UTC, 1 January 1970), so every poller, on any
//!   machine, computes the same ticks without talking to the others; real
//!   time, no time zone (a DST change does not move them).
//! - `cron = "..."`: the occurrences of the expression on the wall clock of
//!   `timezone` (UTC when none is given), with croner's DST rules: a time
//!   that a spring-forward change skips runs at the first valid instant
//!   after the gap (once); a time that an autumn change repeats runs once,
//!   at its first occurrence. So a job at 09:30 in Berlin runs once on the
//!   days the clocks change, at 09:30 local time.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::Error;

/// The schedule of one periodic event.
///
/// ```
/// use action_event::periodic::Schedule;
/// let s = Schedule::every_ms(5_000).unwrap();
/// assert_eq!(s.next_after(12_000), Some(15_000));
/// assert_eq!(s.latest_at_or_before(12_000), Some(10_000));
///
/// let c = Schedule::cron("0 30 9 * * *", Some("Europe/Berlin")).unwrap();
/// // 2026-03-29 is the day Berlin moves to summer time: 09:30 CEST = 07:30 UTC.
/// let before = chrono::DateTime::parse_from_rfc3339("2026-03-29T00:00:00Z").unwrap();
/// let next = c.next_after(before.timestamp_millis()).unwrap();
/// assert_eq!(chrono::DateTime::from_timestamp_millis(next).unwrap().to_rfc3339(),
///            "2026-03-29T07:30:00+00:00");
/// ```
#[derive(Clone)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Every {
        ms: i64,
    },
    Cron {
        cron: Box<croner::Cron>,
        expr: String,
        tz: Tz,
    },
}

impl Schedule {
    /// Every `ms` milliseconds (at least 1000), aligned on the Unix epoch.
    ///
    /// ```
    /// assert!(action_event::periodic::Schedule::every_ms(0).is_err());
    /// ```
    pub fn every_ms(ms: u64) -> Result<Schedule, Error> {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        if ms < 1000 {
            return Err(Error::Registry(format!(
                "a periodic event's `every` must be at least 1s, not {ms}ms"
            )));
        }
        Ok(Schedule {
            kind: Kind::Every { ms },
        })
    }

    /// The occurrences of a cron expression (5 fields, or 6 with seconds
    /// first) in `timezone` (an IANA name; UTC when `None`).
    ///
    /// ```
    /// use action_event::periodic::Schedule;
    /// assert!(Schedule::cron("0 30 9 * * Mon-Fri", Some("America/New_York")).is_ok());
    /// let e = Schedule::cron("0 30 9 * * Mon-Fri", Some("Mars/Olympus")).unwrap_err();
    /// assert!(e.to_string().contains("Mars/Olympus"));
    /// ```
    pub fn cron(expr: &str, timezone: Option<&str>) -> Result<Schedule, Error> {
        let cron = croner::Cron::from_str(expr).map_err(|e| {
            Error::Registry(format!("`cron = {expr:?}` is not a cron expression: {e}"))
        })?;
        let tz = match timezone {
            None | Some("") => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                Error::Registry(format!(
                    "unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\""
                ))
            })?,
        };
        Ok(Schedule {
            kind: Kind::Cron {
                cron: Box::new(cron),
                expr: expr.to_string(),
                tz,
            },
        })
    }

    /// The first tick strictly after `ms`; `None` when the schedule has no
    /// more (a cron expression for a year that has passed).
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every { ms: p } => ms.div_euclid(*p).checked_add(1)?.checked_mul(*p),
            Kind::Cron { cron, tz, .. } => {
                let start = at(tz, ms)?;
                let next = cron.find_next_occurrence(&start, false).ok()?;
                let next = next.timestamp_millis();
                // croner works in whole seconds: skip an occurrence in the
                // same second as `ms` (at or before it).
                if next <= ms {
                    let later = at(tz, next.div_euclid(1000) * 1000 + 1000)?;
                    return cron
                        .find_next_occurrence(&later, true)
                        .ok()
                        .map(|d| d.timestamp_millis());
                }
                Some(next)
            }
        }
    }

    /// The last tick at or before `ms`, if any.
    pub fn latest_at_or_before(&self, ms: i64) -> Option<i64> {
        match &self.kind {
            Kind::Every { ms: p } => ms.div_euclid(*p).checked_mul(*p),
            Kind::Cron { cron, tz, .. } => {
                // Whole seconds: an occurrence at second s counts once
                // s * 1000 <= ms.
                let at = at(tz, ms.div_euclid(1000) * 1000)?;
                cron.find_previous_occurrence(&at, true)
                    .ok()
                    .map(|d| d.timestamp_millis())
            }
        }
    }

    /// The period of an `every` schedule.
    pub fn period_ms(&self) -> Option<i64> {
        match &self.kind {
            Kind::Every { ms } => Some(*ms),
            Kind::Cron { .. } => None,
        }
    }
}

fn at(tz: &Tz, ms: i64) -> Option<DateTime<Tz>> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|d| d.with_timezone(tz))
}

/// `every 5m` or `cron 0 30 9 * * Mon-Fri (Europe/Berlin)`.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Every { ms } => write!(
                f,
                "every {}",
                humantime::format_duration(std::time::Duration::from_millis(
                    u64::try_from(*ms).unwrap_or(0)
                ))
            ),
            Kind::Cron { expr, tz, .. } => write!(f, "cron {expr} ({})", tz.name()),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

/// A tick's time as RFC 3339 in UTC, for logs and `poller status`.
///
/// ```
/// assert_eq!(action_event::periodic::format_tick(0), "1970-01-01T00:00:00Z");
/// ```
pub fn format_tick(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(d) if ms % 1000 == 0 => d.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(d) => d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => format!("{ms}ms"),
    }
}
