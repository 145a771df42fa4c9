//! The wire format: one JSON document per event (see `docs/wire-format.md`).
//!
//! ```
//! use action_event::Envelope;
//! let env = Envelope::from_slice(br#"{"v":1,"id":"0190a0a0-0000-7000-8000-000000000000",
//!     "name":"hello_world","queue":"high","params":{"name":"world"}}"#).unwrap();
//! assert_eq!((env.name.as_str(), env.attempt), ("hello_world", 1));
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The version of the envelope format this crate writes.
///
/// ```
/// let env = action_event::Envelope::new("e", "medium", serde_json::json!({}));
/// assert_eq!(env.v, action_event::envelope::ENVELOPE_VERSION);
/// ```
pub const ENVELOPE_VERSION: u32 = 1;

/// The id of one queued event: a UUID v7 (time-ordered), made by the producer.
///
/// ```
/// use action_event::EventId;
/// let id = EventId::new();
/// let again: EventId = id.to_string().parse().unwrap();
/// assert_eq!(id, again);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub uuid::Uuid);

impl EventId {
    /// A fresh id.
    ///
    /// ```
    /// let (a, b) = (action_event::EventId::new(), action_event::EventId::new());
    /// assert!(a < b); // time-ordered
    /// ```
    pub fn new() -> Self {
        EventId(uuid::Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        uuid::Uuid::parse_str(s)
            .map(EventId)
            .map_err(|e| Error::Envelope(format!("bad event id `{s}`: {e}")))
    }
}

/// One failed attempt, kept with the event until it completes or dies.
///
/// ```
/// use action_event::envelope::AttemptError;
/// let e = AttemptError { attempt: 1, at_ms: 0, message: "boom".into() };
/// assert_eq!(e.attempt, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt that failed (1 for the first run).
    pub attempt: u32,
    /// When it failed, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The error, with its causes.
    pub message: String,
}

/// One event on the wire.
///
/// ```
/// use action_event::Envelope;
/// let env = Envelope::new("hello_world", "high", serde_json::json!({"name": "world"}));
/// let bytes = env.to_bytes();
/// let back = Envelope::from_slice(&bytes).unwrap();
/// assert_eq!(back, env);
/// assert_eq!(back.attempt, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version; this crate writes [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Unique id, made by the producer.
    pub id: EventId,
    /// The event name, e.g. `hello_world`.
    pub name: String,
    /// The queue it was queued on.
    pub queue: String,
    /// The params: a JSON object.
    pub params: serde_json::Value,
    /// Which attempt the next run is: 1 for the first.
    #[serde(default = "one")]
    pub attempt: u32,
    /// When it was first queued, milliseconds since the Unix epoch.
    #[serde(default)]
    pub queued_at_ms: u64,
    /// Not to run before this time (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
    /// Errors of earlier attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<AttemptError>,
}

fn one() -> u32 {
    1
}

/// Milliseconds since the Unix epoch, now.
///
/// ```
/// assert!(action_event::envelope::now_ms() > 1_600_000_000_000);
/// ```
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl Envelope {
    /// A new first-attempt envelope with a fresh id, queued now.
    ///
    /// ```
    /// let env = action_event::Envelope::new("hello_world", "high", serde_json::json!({"name": "world"}));
    /// assert_eq!((env.attempt, env.run_at_ms), (1, None));
    /// ```
    pub fn new(
        name: impl Into<String>,
        queue: impl Into<String>,
        params: serde_json::Value,
    ) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            id: EventId::new(),
            name: name.into(),
            queue: queue.into(),
            params,
            attempt: 1,
            queued_at_ms: now_ms(),
            run_at_ms: None,
            errors: Vec::new(),
        }
    }

    /// The JSON document.
    ///
    /// ```
    /// let env = action_event::Envelope::new("hello_world", "high", serde_json::json!({}));
    /// let text = String::from_utf8(env.to_bytes()).unwrap();
    /// assert!(text.starts_with(r#"{"v":1,"id":""#), "{text}");
    /// ```
    pub fn to_bytes(&self) -> Vec<u8> {
        // Sized for a typical envelope up front: `to_vec` starts at 128
        // bytes and grows (a reallocation and a copy) on every publish.
        let mut out = Vec::with_capacity(256 + self.errors.len() * 128);
        if !self.errors.is_empty() {
            // Retries only: the derived serializer, same bytes. It cannot
            // fail: every field is plain data and params is already a
            // `serde_json::Value`.
            return match serde_json::to_writer(&mut out, self) {
                Ok(()) => out,
                Err(_) => Vec::new(),
            };
        }
        // A first attempt, written by hand in the derived serializer's
        // order and format (keys as literals: serde_json escapes each key
        // byte by byte, which was half the cost of a publish's envelope).
        out.extend_from_slice(b"{\"v\":");
        push_number(&mut out, self.v);
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(
            self.id
                .0
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"name\":");
        push_str(&mut out, &self.name);
        out.extend_from_slice(b",\"queue\":");
        push_str(&mut out, &self.queue);
        out.extend_from_slice(b",\"params\":");
        if serde_json::to_writer(&mut out, &self.params).is_err() {
            return Vec::new();
        }
        out.extend_from_slice(b",\"attempt\":");
        push_number(&mut out, self.attempt);
        out.extend_from_slice(b",\"queued_at_ms\":");
        push_number(&mut out, self.queued_at_ms);
        if let Some(run_at_ms) = self.run_at_ms {
            out.extend_from_slice(b",\"run_at_ms\":");
            push_number(&mut out, run_at_ms);
        }
        out.push(b'}');
        out
    }

    /// Parses a JSON document; the error says what is wrong and where.
    ///
    /// ```
    /// use action_event::Envelope;
    /// let err = Envelope::from_slice(b"{not json").unwrap_err().to_string();
    /// assert!(err.starts_with("invalid envelope: not valid JSON"), "{err}");
    /// let err = Envelope::from_slice(br#"{"name": "x"}"#).unwrap_err().to_string();
    /// assert!(err.contains("not an action_event envelope"), "{err}");
    /// ```
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
            let what = if serde_json::from_slice::<serde_json::Value>(bytes).is_err() {
                "not valid JSON"
            } else {
                "JSON that is not an action_event envelope"
            };
            Error::Envelope(format!("{what}: {e}"))
        })?;
        if env.v != ENVELOPE_VERSION {
            return Err(Error::Envelope(format!(
                "event `{}`: envelope version {} is not supported (this build reads {ENVELOPE_VERSION})",
                env.name, env.v
            )));
        }
        if !env.params.is_object() {
            return Err(Error::Envelope(format!(
                "event `{}`: params must be a JSON object, got `{}`",
                env.name, env.params
            )));
        }
        Ok(env)
    }

    /// The params as one line of JSON, for logs.
    ///
    /// ```
    /// let env = action_event::Envelope::new("e", "medium", serde_json::json!({"ids": [1, 2]}));
    /// assert_eq!(env.params_json(), r#"{"ids":[1,2]}"#);
    /// ```
    pub fn params_json(&self) -> String {
        self.params.to_string()
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it (the
/// common case, nothing to escape, is one copy).
fn push_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing a string to a Vec cannot fail; keep the JSON valid anyway.
        out.extend_from_slice(b"\"\"");
    }
}

/// Appends `n` in decimal, as serde_json writes it.
fn push_number(out: &mut Vec<u8>, n: impl Into<u64>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n: u64 = n.into();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written first-attempt bytes are the derived serializer's.
    #[test]
    fn to_bytes_matches_the_derived_serializer() {
        let mut cases = vec![
            Envelope::new("hello_world", "high", serde_json::json!({"name": "world"})),
            Envelope::new("q\"uo\\te\n\u{1}é", "low", serde_json::json!({})),
            Envelope::new(
                "",
                "",
                serde_json::json!({"a": [1, "x\"y", null], "b": {"c": 1.5}}),
            ),
        ];
        let mut delayed = Envelope::new("later", "medium", serde_json::json!({"i": 0}));
        delayed.run_at_ms = Some(u64::MAX);
        delayed.queued_at_ms = 0;
        delayed.attempt = 0;
        cases.push(delayed);
        let mut retried = Envelope::new("retry", "medium", serde_json::json!({}));
        retried.errors.push(AttemptError {
            attempt: 1,
            at_ms: 5,
            message: "boom \"x\"".into(),
        });
        cases.push(retried);
        for env in cases {
            let derived = serde_json::to_vec(&env).expect("serializes");
            assert_eq!(
                String::from_utf8_lossy(&env.to_bytes()),
                String::from_utf8_lossy(&derived),
                "event `{}`",
                env.name
            );
            assert_eq!(
                Envelope::from_slice(&env.to_bytes()).ok(),
                Some(env).filter(|e| e.params.is_object())
            );
        }
    }
}
