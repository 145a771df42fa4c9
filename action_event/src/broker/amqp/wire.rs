use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Header of dead events: the event name (when known).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_NAME, "x-action-event-name");
/// ```
pub const HEADER_NAME: &str = "x-action-event-name";
/// Header of dead events: the logical queue name (without prefix).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_QUEUE, "x-action-event-queue");
/// ```
pub const HEADER_QUEUE: &str = "x-action-event-queue";
/// Header of delayed events: not to run before this time (ms since the
/// Unix epoch). Event messages carry no other header: everything else is
/// in the body (see `docs/wire-format.md`).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_RUN_AT, "x-action-event-run-at");
/// ```
pub const HEADER_RUN_AT: &str = "x-action-event-run-at";
/// Header on dead events: when it died (ms since the Unix epoch).
///
/// ```
/// assert_eq!(action_event::broker::amqp::HEADER_DIED_AT, "x-action-event-died-at");
/// ```
pub const HEADER_DIED_AT: &str = "x-action-event-died-at";

/// The event id and name of a message (see `Tag::ident`).
pub(super) fn ident_of(props: &BasicProperties, body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Ident {
        id: String,
        name: String,
    }
    if let Ok(i) = serde_json::from_slice::<Ident>(body) {
        return (i.id, i.name);
    }
    let prop = |p: &Option<ShortString>| {
        p.as_ref()
            .map_or_else(|| "?".to_string(), |s| s.as_str().to_string())
    };
    (prop(props.message_id()), prop(props.kind()))
}

fn header_u64(props: &BasicProperties, key: &str) -> Option<u64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some(u64::from(*v)),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
        AMQPValue::Timestamp(v) => Some(*v),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

/// `run_at` of a message: the header, else the envelope field. (The body
/// is parsed only if it names the field: the poller parses it anyway, and a
/// second full parse per event showed in the profile.)
pub(super) fn run_at_of(props: &BasicProperties, body: &[u8]) -> Option<u64> {
    if let Some(v) = header_u64(props, HEADER_RUN_AT) {
        return Some(v);
    }
    // Built once: building the searcher per event showed in the profile.
    static FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"run_at_ms\""));
    FIELD.find(body)?;
    #[derive(serde::Deserialize)]
    struct RunAt {
        run_at_ms: Option<u64>,
    }
    serde_json::from_slice::<RunAt>(body).ok()?.run_at_ms
}

pub(super) fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

pub(super) fn i64_of(v: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The properties of an event message: persistent JSON, and no other
/// property nor header unless delayed (`x-action-event-run-at`). Everything
/// else is in the body. The envelope's name, queue, attempt and version
/// were headers once, and its id, name and time the `message_id`, `type`
/// and `timestamp` properties: RabbitMQ 3.10 took them all at a cost. A
/// raw lapin consumer drained 40,000 messages with the four headers in
/// 2.68-2.72 s, without them 1.18-1.29 s; 100,000 messages with the three
/// properties were published in 6.1-6.3 s (without: 4.5-4.8 s) and drained
/// in 4.6-4.9 s (without: 3.7-3.8 s), 3 runs each, taking turns.
pub(super) fn envelope_properties(run_at: Option<u64>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    match run_at {
        Some(r) => {
            let mut headers = FieldTable::default();
            headers.insert(HEADER_RUN_AT.into(), i64_of(r));
            props.with_headers(headers)
        }
        None => props,
    }
}

/// A copy of a message's properties fit to publish again: without the
/// dead-lettering headers (RabbitMQ 3.x drops a message whose `x-death`
/// shows a cycle), with `run_at` set.
pub(super) fn republish_properties(props: &BasicProperties, run_at: u64) -> BasicProperties {
    let copy = copy_properties(props);
    let mut headers = copy.headers().clone().unwrap_or_default();
    headers.insert(HEADER_RUN_AT.into(), i64_of(run_at));
    copy.with_headers(headers)
}

/// A copy of a message's properties for a renewal copy: persistent, without
/// the dead-lettering headers and the broker's delivery count (see [`republish_properties`]).
pub(super) fn copy_properties(props: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            // `x-delivery-count` is the broker's count of this delivery: a
            // copy is a new message (see `poison`).
            if k.as_str() == "x-death"
                || k.as_str().starts_with("x-first-death")
                || k.as_str() == "x-delivery-count"
            {
                continue;
            }
            headers.insert(k.clone(), v.clone());
        }
    }
    without_expiration(props)
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// `props` with a per-message TTL of `ttl_ms`, for a message published to
/// a queue whose `x-message-ttl` is that same `ttl_ms` (a delay level, a
/// hold queue). The queue's own TTL should be enough, but RabbitMQ 3.10.8
/// applies a new *quorum* queue's `x-message-ttl` through a separate Raft
/// command (`update_config`): messages that reach the queue before it was
/// applied (many channels declaring a level and publishing into it at the
/// same moment, as a burst of failing events does) never expire, and since
/// a quorum queue expires only from its head, neither does anything behind
/// them (measured on a 3-node cluster, `tests/e2e/cluster_ttl_e2e.rs`:
/// without `expiration`, 2-3 of 5 new levels kept all their events in 3 runs
/// of 3; with it, none in 22 rounds). RabbitMQ removes `expiration` when it
/// dead-letters a message, so the event reaches its work queue without it
/// (`tests/broker/amqp_quorum_ttl.rs`).
pub(super) fn expiring_properties(props: BasicProperties, ttl_ms: u64) -> BasicProperties {
    props.with_expiration(ShortString::from(ttl_ms.to_string()))
}

/// A copy of `props` without `expiration` (a copy must never expire in a
/// queue that has no dead-letter exchange: it would be dropped).
fn without_expiration(props: &BasicProperties) -> BasicProperties {
    if props.expiration().is_none() {
        return props.clone();
    }
    let mut out = BasicProperties::default();
    macro_rules! keep {
        ($($get:ident => $set:ident),* $(,)?) => {
            $(if let Some(v) = props.$get() {
                out = out.$set(v.clone());
            })*
        };
    }
    keep!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        headers => with_headers,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        user_id => with_user_id,
        app_id => with_app_id,
        cluster_id => with_cluster_id,
    );
    out
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    #[test]
    fn a_copy_keeps_every_property_but_expiration_and_dead_lettering() {
        let mut h = FieldTable::default();
        h.insert("x-death".into(), long_str("cycle"));
        h.insert("x-action-event-run-at".into(), i64_of(7));
        let props = expiring_properties(
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_priority(3)
                .with_message_id("m".into())
                .with_app_id("a".into())
                .with_headers(h),
            500,
        );
        assert_eq!(props.expiration().as_ref().map(|e| e.as_str()), Some("500"));
        let copy = copy_properties(&props);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.delivery_mode(), &Some(2));
        assert_eq!(copy.priority(), &Some(3));
        assert_eq!(copy.message_id().as_ref().map(|m| m.as_str()), Some("m"));
        assert_eq!(copy.app_id().as_ref().map(|m| m.as_str()), Some("a"));
        assert_eq!(copy.content_type(), props.content_type());
        let h = copy.headers().clone().unwrap_or_default();
        assert!(!h.inner().contains_key("x-death"));
        assert_eq!(run_at_of(&copy, b"{}"), Some(7));
    }

    #[test]
    fn event_messages_carry_no_header_but_run_at() {
        let plain = envelope_properties(None);
        assert!(plain.headers().is_none(), "{plain:?}");
        assert_eq!(
            plain,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
            "an event message is persistent JSON and nothing else"
        );
        let delayed = envelope_properties(Some(7));
        let headers = delayed.headers().as_ref().expect("headers");
        assert_eq!(headers.inner().len(), 1);
        assert_eq!(header_u64(&delayed, HEADER_RUN_AT), Some(7));
    }

    #[test]
    fn event_id_and_name_from_the_body_else_the_properties() {
        let env = Envelope::new("hello_world", "high", serde_json::json!({"a": 1}));
        let body = serde_json::to_vec(&env).expect("json");
        let none = BasicProperties::default();
        assert_eq!(
            ident_of(&none, &body),
            (env.id.to_string(), "hello_world".to_string())
        );
        let foreign = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_type("t".into());
        assert_eq!(
            ident_of(&foreign, b"not json"),
            ("m-1".to_string(), "t".to_string())
        );
        assert_eq!(ident_of(&none, b"{}"), ("?".to_string(), "?".to_string()));
    }

    #[test]
    fn run_at_from_the_header_else_the_body() {
        let plain = BasicProperties::default();
        let body = br#"{"v":1,"id":"x","name":"n","queue":"q","params":{},"run_at_ms":1234}"#;
        assert_eq!(run_at_of(&plain, body), Some(1234));
        let none = br#"{"v":1,"id":"x","name":"n","queue":"q","params":{"note":"run_at_ms"}}"#;
        assert_eq!(run_at_of(&plain, none), None);
        let named = br#"{"v":1,"id":"x","name":"n","queue":"q","params":{"run_at_ms":5}}"#;
        assert_eq!(
            run_at_of(&plain, named),
            None,
            "a param of that name is not the field"
        );
        let mut h = FieldTable::default();
        h.insert(HEADER_RUN_AT.into(), i64_of(99));
        assert_eq!(run_at_of(&plain.with_headers(h), none), Some(99));
    }
}
