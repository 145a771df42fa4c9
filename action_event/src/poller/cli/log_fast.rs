//! The cheap parts of the human log line: the timestamp and the fields.
//!
//! The poller writes two INFO lines per event; with tracing-subscriber's
//! defaults those cost more CPU than the event's broker work (callgrind:
//! ~15,000 instructions per event for the lines, ~6,600 for the event's
//! span): the timestamp is a calendar conversion per line, and the message
//! goes through an escaping writer one `char` at a time. Here the date and
//! time up to the second are kept per thread and reused within that second,
//! and text is escaped in runs: clean text (no control character) is
//! written in one piece. The output is the same, byte for byte.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Writes the current time as tracing-subscriber's `SystemTime` does
/// (`2026-12-04T16:08:02.123456Z`), converting the date once per second.
pub(super) fn write_now(w: &mut impl fmt::Write) -> fmt::Result {
    thread_local! {
        /// The last second formatted: `(seconds since the epoch, "YYYY-MM-DDTHH:MM:SS.")`.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let Ok(since) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return w.write_str("-");
    };
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            cell.1.clear();
            let days = secs / 86_400;
            let rem = secs % 86_400;
            let (y, m, d) = civil_from_days(days as i64);
            // Writing to a String cannot fail.
            let _ = write!(
                cell.1,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            cell.0 = secs;
        }
        w.write_str(&cell.1)?;
        let mut digits = [b'0'; 7];
        let mut n = micros;
        for i in (0..6).rev() {
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        digits[6] = b'Z';
        // ASCII digits and `Z`.
        w.write_str(std::str::from_utf8(&digits).unwrap_or("000000Z"))
    })
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Escapes what could drive a terminal (the C0 controls ESC, BEL, BS, FF,
/// DEL and the C1 controls), as tracing-subscriber does for a message, but
/// writes the text between them in one piece.
struct Escaping<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        // C1 controls (U+0080..U+009F) are 0xC2 0x80..0x9F in UTF-8.
        let special = |b: u8| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2);
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if !special(bytes[i]) {
                i += 1;
                continue;
            }
            let (esc, len): (Option<&str>, usize) = match bytes[i] {
                0x1b => (Some("\\x1b"), 1),
                0x07 => (Some("\\x07"), 1),
                0x08 => (Some("\\x08"), 1),
                0x0c => (Some("\\x0c"), 1),
                0x7f => (Some("\\x7f"), 1),
                _ => match bytes.get(i + 1) {
                    Some(&b) if (0x80..=0x9f).contains(&b) => (None, 2),
                    _ => {
                        i += 1;
                        continue;
                    }
                },
            };
            self.0.write_str(&s[start..i])?;
            match esc {
                Some(e) => self.0.write_str(e)?,
                None => write!(self.0, "\\u{{{:x}}}", bytes[i + 1])?,
            }
            i += len;
            start = i;
        }
        self.0.write_str(&s[start..])
    }
}

/// tracing-subscriber's `DefaultFields` output (`message` first as is,
/// escaped; other fields as ` name=value` with `Debug` values), written
/// without a per-character writer.
pub(super) struct FastFields;

impl<'w> FormatFields<'w> for FastFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = FastVisitor {
            w: writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct FastVisitor<'w> {
    w: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl FastVisitor<'_> {
    fn pad(&mut self) -> fmt::Result {
        if self.first {
            self.first = false;
            Ok(())
        } else {
            self.w.write_char(' ')
        }
    }
}

impl Visit for FastVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.result = self
                .pad()
                .and_then(|()| Escaping(&mut self.w).write_str(value));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        self.result = self.pad().and_then(|()| match name {
            "message" => write!(Escaping(&mut self.w), "{value:?}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.w, "{name}={value:?}")
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_is_the_one_tracing_subscriber_writes() {
        let mut ours = String::new();
        write_now(&mut ours).expect("write");
        let mut theirs = String::new();
        {
            use tracing_subscriber::fmt::time::FormatTime as _;
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .expect("format");
        }
        // Same shape; the same second unless the clock ticked between the calls.
        assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
        assert_eq!(ours[..10], theirs[..10], "{ours} vs {theirs}");
        assert!(ours.ends_with('Z'));
        for days in [0i64, 59, 365, 11_016, 20_426, 20_791] {
            let secs = days as u64 * 86_400 + 3_723;
            let t = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let mut theirs = String::new();
            write!(theirs, "{}", humantime::format_rfc3339_seconds(t)).expect("fmt");
            let (y, m, d) = civil_from_days(days);
            assert_eq!(
                format!("{y:04}-{m:02}-{d:02}T01:02:03Z"),
                theirs,
                "day {days}"
            );
        }
    }

    #[test]
    fn control_characters_are_escaped_and_clean_text_is_kept() {
        let mut out = String::new();
        write!(Escaping(&mut out), "a\x1b[31mb\x07c\u{85}d é ü \u{a0}").expect("write");
        assert_eq!(out, "a\\x1b[31mb\\x07c\\u{85}d é ü \u{a0}");
    }
}
