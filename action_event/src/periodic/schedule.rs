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
//!   after the gap (02:30 in Berlin on 29 March 2026 runs at 03:00 CEST,
//!   once); a time that an autumn change repeats runs once,
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
                // croner works in whole seconds (and keeps a start's
                // fraction): from the second `ms` falls in, every later
                // occurrence is a whole second after `ms`.
                let start = at(tz, ms.div_euclid(1000) * 1000)?;
                cron.find_next_occurrence(&start, false)
                    .ok()
                    .map(|d| d.timestamp_millis().div_euclid(1000) * 1000)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("a time")
            .timestamp_millis()
    }

    /// The `n` ticks after `from`, in UTC.
    fn ticks(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut at = ms(from);
        (0..n)
            .map(|_| {
                at = s.next_after(at).expect("a next tick");
                format_tick(at)
            })
            .collect()
    }

    #[test]
    fn berlin_0930_runs_once_a_day_across_both_changes() {
        let s = Schedule::cron("0 30 9 * * *", Some("Europe/Berlin")).unwrap();
        // 29 March 2026: CET (UTC+1) -> CEST (UTC+2) at 02:00.
        assert_eq!(
            ticks(&s, "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T08:30:00Z",
                "2026-03-29T07:30:00Z",
                "2026-03-30T07:30:00Z"
            ]
        );
        // 25 October 2026: CEST -> CET at 03:00.
        assert_eq!(
            ticks(&s, "2026-10-24T00:00:00Z", 3),
            [
                "2026-10-24T07:30:00Z",
                "2026-10-25T08:30:00Z",
                "2026-10-26T08:30:00Z"
            ]
        );
    }

    #[test]
    fn new_york_0930_weekdays_across_both_changes() {
        let s = Schedule::cron("0 30 9 * * Mon-Fri", Some("America/New_York")).unwrap();
        // 8 March 2026 (a Sunday): EST (UTC-5) -> EDT (UTC-4).
        assert_eq!(
            ticks(&s, "2026-03-06T00:00:00Z", 2),
            ["2026-03-06T14:30:00Z", "2026-03-09T13:30:00Z"]
        );
        // 1 November 2026 (a Sunday): EDT -> EST.
        assert_eq!(
            ticks(&s, "2026-10-30T00:00:00Z", 2),
            ["2026-10-30T13:30:00Z", "2026-11-02T14:30:00Z"]
        );
    }

    #[test]
    fn times_in_the_gap_or_the_overlap_run_once() {
        // Berlin 02:30 does not exist on 29 March 2026 and happens twice on
        // 25 October 2026: one tick on each of those days.
        let s = Schedule::cron("0 30 2 * * *", Some("Europe/Berlin")).unwrap();
        let spring = ticks(&s, "2026-03-28T12:00:00Z", 2);
        assert_eq!(spring[1], "2026-03-30T00:30:00Z", "{spring:?}");
        // skipped by the change: at 03:00 CEST, the first instant after the gap
        assert_eq!(spring[0], "2026-03-29T01:00:00Z", "{spring:?}");
        assert_eq!(
            ticks(&s, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // New York 01:30 happens twice on 1 November 2026: once.
        let s = Schedule::cron("0 30 1 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            ticks(&s, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn every_counts_real_time_through_a_change() {
        let s = Schedule::every_ms(3_600_000).unwrap();
        assert_eq!(
            ticks(&s, "2026-03-29T00:10:00Z", 3),
            [
                "2026-03-29T01:00:00Z",
                "2026-03-29T02:00:00Z",
                "2026-03-29T03:00:00Z"
            ]
        );
    }

    #[test]
    fn latest_at_or_before_counts_the_tick_at_that_second() {
        let s = Schedule::cron("*/10 * * * * *", None).unwrap();
        assert_eq!(
            s.latest_at_or_before(ms("2026-01-01T00:00:10Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        assert_eq!(
            s.latest_at_or_before(ms("2026-01-01T00:00:09.999Z")),
            Some(ms("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:10Z")),
            Some(ms("2026-01-01T00:00:20Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:09.5Z")),
            Some(ms("2026-01-01T00:00:10Z"))
        );
    }
}
