//! The CloudEvents binding for NATS messages (spec: `nats-protocol-binding.md`).
//!
//! Writing uses binary mode: every attribute and extension becomes a `ce-<name>`
//! header whose value is percent-encoded (space, `"`, `%`, controls and all non-ASCII
//! characters, as UTF-8 bytes in upper-case hex); the data is the payload. Reading
//! accepts binary mode and structured mode (`Content-Type: application/cloudevents…`,
//! matched case-insensitively, with the JSON event format as the payload). Header names
//! are matched case-insensitively; values may be double-quoted strings, as older
//! senders wrote them, and percent-decoding refuses invalid UTF-8.

use std::borrow::Cow;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use cloudevents::event::SpecVersion;
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, Error as MessageError, MessageAttributeValue,
    MessageDeserializer, StructuredDeserializer, StructuredSerializer,
};
use cloudevents::{AttributesReader, Data, Event};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

const PREFIX: &str = "ce-";
const SPEC_VERSION: &str = "ce-specversion";
const STRUCTURED: &str = "application/cloudevents";

/// Space, double-quote, percent, controls; non-ASCII is always encoded.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Why a NATS message is not a CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("the message carries no CloudEvent: no ce-specversion header and no structured content type")]
    NotACloudEvent,
    #[error("header {name} is not valid: {reason}")]
    BadHeader { name: String, reason: &'static str },
    #[error("invalid CloudEvent: {0}")]
    Invalid(#[from] MessageError),
    #[error("attribute name `{0}` is not lower-case ASCII letters and digits")]
    BadAttributeName(String),
}

/// Percent-encodes a header value as the binding requires.
pub fn encode_header_value(value: &str) -> String {
    utf8_percent_encode(value, HEADER_VALUE).to_string()
}

/// Reads a header value back: unquotes a double-quoted string, then percent-decodes
/// once, refusing byte sequences that are not UTF-8.
pub fn decode_header_value(value: &str) -> Result<String, &'static str> {
    decode_value(value).map(Cow::into_owned)
}

/// [`decode_header_value`], borrowing the value when it holds nothing to decode.
fn decode_value(value: &str) -> Result<Cow<'_, str>, &'static str> {
    let trimmed = value.trim_matches([' ', '\t']);
    let unquoted = if trimmed.len() >= 2 && trimmed.starts_with('"') && trimmed.ends_with('"') {
        let mut out = String::with_capacity(trimmed.len());
        let mut chars = trimmed[1..trimmed.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.push(chars.next().ok_or("a quoted string ends in a backslash")?);
            } else if c == '"' {
                return Err("a quoted string holds an unescaped double quote");
            } else {
                out.push(c);
            }
        }
        out
    } else {
        return percent_decode_str(trimmed)
            .decode_utf8()
            .map_err(|_| "percent-encoded bytes are not UTF-8");
    };
    percent_decode_str(&unquoted)
        .decode_utf8()
        .map(|s| Cow::Owned(s.into_owned()))
        .map_err(|_| "percent-encoded bytes are not UTF-8")
}

/// A NATS message body and headers carrying a CloudEvent.
#[derive(Debug, Clone, Default)]
pub struct NatsMessage {
    pub headers: HeaderMap,
    pub payload: Vec<u8>,
}

/// Encodes `event` in binary mode.
///
/// JSON data without a `datacontenttype` (as the JSON event format allows, where it
/// implies `application/json`) is sent with `content-type: application/json`, so
/// that a binary-mode reader still knows it is JSON.
pub fn to_binary(mut event: Event) -> Result<NatsMessage, BindingError> {
    if event.datacontenttype().is_none() && matches!(event.data(), Some(Data::Json(_))) {
        if let (_, _, Some(data)) = event.take_data() {
            event.set_data("application/json", data);
        }
    }
    Ok(BinaryDeserializer::deserialize_binary(
        event,
        NatsMessage::default(),
    )?)
}

/// Decodes a CloudEvent from a NATS message in either content mode.
pub fn from_message(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Event, BindingError> {
    let reader = Reader::new(headers, payload)?;
    let event = match reader.encoding() {
        Encoding::UNKNOWN => return Err(BindingError::NotACloudEvent),
        _ => MessageDeserializer::into_event(reader)?,
    };
    // The spec's rule for every attribute name; structured mode would otherwise let
    // any JSON key through, which no binary-mode header could carry.
    if let Some((bad, _)) = event
        .iter_extensions()
        .find(|(name, _)| !valid_attribute_name(name))
    {
        return Err(BindingError::BadAttributeName(
            bad.chars().take(64).collect(),
        ));
    }
    Ok(event)
}

/// What projection, replay and history read of an event: its id, type, time and data,
/// borrowed from the message where it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View<'a> {
    pub id: Cow<'a, str>,
    pub ty: Cow<'a, str>,
    pub time: Option<DateTime<Utc>>,
    pub data: Cow<'a, [u8]>,
}

impl View<'_> {
    /// The source time, the Unix epoch when absent (as [`crate::envelope::event_time`]).
    pub fn time_or_epoch(&self) -> DateTime<Utc> {
        self.time.unwrap_or_default()
    }
}

/// Reads the [`View`] of a NATS message: what [`from_message`] would decode, with the
/// same refusals, but without building an `Event` for the common case (binary mode,
/// CloudEvents 1.0, attribute names already lower-case). Projection reads every event
/// twice (its object's table and the links), so this is its hottest path.
pub fn view<'a>(
    headers: Option<&'a HeaderMap>,
    payload: &'a [u8],
) -> Result<View<'a>, BindingError> {
    if let Some(view) = headers.and_then(|h| binary_view(h, payload)) {
        return Ok(view);
    }
    let event = from_message(headers, payload)?;
    Ok(View {
        id: Cow::Owned(event.id().to_owned()),
        ty: Cow::Owned(event.ty().to_owned()),
        time: event.time().copied(),
        data: Cow::Owned(crate::envelope::data_bytes(&event)),
    })
}

/// The common case of [`view`], or `None` whenever anything differs from it: the full
/// decoder then decides, and words any refusal. Accepts only what [`from_message`]
/// accepts, with the same id, type, time and data (checked by the `cloudevent_binary`
/// fuzz target and its corpus).
fn binary_view<'a>(headers: &'a HeaderMap, payload: &'a [u8]) -> Option<View<'a>> {
    let (mut spec, mut source) = (false, false);
    let (mut id, mut ty, mut time) = (None, None, None);
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case("content-type") {
            let value = decode_value(values.last()?.as_str()).ok()?;
            if value.to_ascii_lowercase().starts_with(STRUCTURED) {
                return None;
            }
            continue;
        }
        let prefixed = name
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX));
        if !prefixed {
            continue;
        }
        // Lower-case names only: no two headers can then name one attribute.
        let attr = name.strip_prefix(PREFIX)?;
        if !valid_attribute_name(attr) {
            return None;
        }
        let value = decode_value(values.last()?.as_str()).ok()?;
        match attr {
            "specversion" if value == "1.0" => spec = true,
            "specversion" => return None,
            "id" => id = Some(value),
            "type" => ty = Some(value),
            "source" => source = true,
            "time" => time = Some(DateTime::parse_from_rfc3339(&value).ok()?.to_utc()),
            "dataschema" => {
                url::Url::parse(&value).ok()?;
            }
            _ => {}
        }
    }
    if !(spec && source) {
        return None;
    }
    Some(View {
        id: id?,
        ty: ty?,
        time,
        data: Cow::Borrowed(payload),
    })
}

/// `a`-`z` and `0`-`9`, as CloudEvents requires of attribute names.
fn valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl NatsMessage {
    fn header(mut self, name: &str, value: &str) -> Result<Self, MessageError> {
        let name: async_nats::header::HeaderName =
            name.parse().map_err(|e| MessageError::Other {
                source: format!("attribute `{name}` cannot be a NATS header: {e}").into(),
            })?;
        self.headers
            .insert(name, encode_header_value(value).as_str());
        Ok(self)
    }
}

impl BinarySerializer<NatsMessage> for NatsMessage {
    fn set_spec_version(self, spec_version: SpecVersion) -> Result<Self, MessageError> {
        self.header(SPEC_VERSION, spec_version.as_str())
    }

    fn set_attribute(self, name: &str, value: MessageAttributeValue) -> Result<Self, MessageError> {
        let text = match value {
            // RFC 3339 in UTC with `Z`, the form most consumers expect.
            MessageAttributeValue::DateTime(t) => {
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            }
            other => other.to_string(),
        };
        self.header(&format!("{PREFIX}{name}"), &text)
    }

    fn set_extension(self, name: &str, value: MessageAttributeValue) -> Result<Self, MessageError> {
        self.header(&format!("{PREFIX}{name}"), &value.to_string())
    }

    fn end_with_data(mut self, bytes: Vec<u8>) -> Result<NatsMessage, MessageError> {
        self.payload = bytes;
        Ok(self)
    }

    fn end(self) -> Result<NatsMessage, MessageError> {
        Ok(self)
    }
}

/// Decoded headers of one message: lower-case names, decoded values.
struct Reader<'a> {
    headers: Vec<(String, String)>,
    payload: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(headers: Option<&HeaderMap>, payload: &'a [u8]) -> Result<Self, BindingError> {
        let mut decoded = Vec::new();
        for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
            let lower = name.to_string().to_ascii_lowercase();
            let interesting = lower.starts_with(PREFIX) || lower == "content-type";
            if let (true, Some(value)) = (interesting, values.last()) {
                let value = decode_header_value(value.as_str()).map_err(|reason| {
                    BindingError::BadHeader {
                        name: lower.clone(),
                        reason,
                    }
                })?;
                decoded.push((lower, value));
            }
        }
        Ok(Self {
            headers: decoded,
            payload,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl BinaryDeserializer for Reader<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        self,
        mut visitor: V,
    ) -> Result<R, MessageError> {
        let spec = self
            .get(SPEC_VERSION)
            .ok_or(MessageError::WrongEncoding {})?;
        let spec = SpecVersion::try_from(spec)?;
        let attributes = spec.attribute_names();
        visitor = visitor.set_spec_version(spec)?;
        for (name, value) in &self.headers {
            let Some(attr) = name.strip_prefix(PREFIX) else {
                continue;
            };
            if attr == "specversion" {
                continue;
            }
            let value = MessageAttributeValue::String(value.clone());
            visitor = if attributes.contains(&attr) {
                visitor.set_attribute(attr, value)?
            } else {
                visitor.set_extension(attr, value)?
            };
        }
        if self.payload.is_empty() {
            visitor.end()
        } else {
            visitor.end_with_data(self.payload.to_vec())
        }
    }
}

impl StructuredDeserializer for Reader<'_> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(
        self,
        visitor: V,
    ) -> Result<R, MessageError> {
        visitor.set_structured_event(self.payload.to_vec())
    }
}

impl MessageDeserializer for Reader<'_> {
    fn encoding(&self) -> Encoding {
        let structured = self
            .get("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with(STRUCTURED));
        if structured {
            Encoding::STRUCTURED
        } else if self.get(SPEC_VERSION).is_some() {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
    use proptest::prelude::*;

    fn sample() -> Event {
        let mut event = EventBuilderV10::new()
            .id("hs-1-abc")
            .source("/crmsync/hubspot/62515")
            .ty("crmsync.contact.updated.v1")
            .subject("contact/123")
            .time("2019-07-26T04:00:00Z")
            .extension("crmattempt", "Euro € 😀 \"q\" 100%")
            .build()
            .unwrap();
        event.set_data("application/json", br#"{"a":1}"#.to_vec());
        event
    }

    #[test]
    fn the_spec_example_value_is_encoded_as_given() {
        assert_eq!(
            encode_header_value("Euro € 😀"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(
            decode_header_value("Euro%20%e2%82%ac%20%F0%9F%98%80").unwrap(),
            "Euro € 😀"
        );
    }

    #[test]
    fn overlong_and_invalid_utf8_is_refused() {
        assert!(decode_header_value("%C0%A0").is_err());
        assert!(decode_header_value("%FF").is_err());
    }

    #[test]
    fn quoted_values_from_older_senders_are_accepted() {
        assert_eq!(decode_header_value(r#""a \"b\" c""#).unwrap(), r#"a "b" c"#);
        assert_eq!(decode_header_value(r#""a%20b""#).unwrap(), "a b");
    }

    #[test]
    fn binary_mode_puts_attributes_in_ce_headers_and_data_in_the_payload() {
        let msg = to_binary(sample()).unwrap();
        assert_eq!(msg.payload, br#"{"a":1}"#);
        let h = |n: &str| msg.headers.get(n).map(|v| v.as_str().to_owned());
        assert_eq!(h("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(h("ce-id").as_deref(), Some("hs-1-abc"));
        assert_eq!(h("ce-type").as_deref(), Some("crmsync.contact.updated.v1"));
        assert_eq!(h("ce-datacontenttype").as_deref(), Some("application/json"));
        assert_eq!(
            h("ce-crmattempt").as_deref(),
            Some("Euro%20%E2%82%AC%20%F0%9F%98%80%20%22q%22%20100%25")
        );
        for (_, values) in msg.headers.iter() {
            for v in values {
                assert!(v.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
        }
    }

    #[test]
    fn binary_mode_round_trips() {
        let event = sample();
        let msg = to_binary(event.clone()).unwrap();
        let back = from_message(Some(&msg.headers), &msg.payload).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn header_names_are_matched_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert("CE-SpecVersion", "1.0");
        headers.insert("Ce-Id", "x");
        headers.insert("ce-SOURCE", "/s");
        headers.insert("ce-type", "t");
        let event = from_message(Some(&headers), b"").unwrap();
        assert_eq!(event.id(), "x");
        assert_eq!(event.source().as_str(), "/s");
    }

    #[test]
    fn structured_mode_is_read_back() {
        let event = sample();
        let mut headers = HeaderMap::new();
        headers.insert(
            "Content-Type",
            "Application/CloudEvents+json; charset=utf-8",
        );
        let json = serde_json::to_vec(&event).unwrap();
        let back = from_message(Some(&headers), &json).unwrap();
        assert_eq!(back.id(), event.id());
        assert_eq!(back.ty(), event.ty());
        assert_eq!(
            crate::envelope::data_bytes(&back),
            crate::envelope::data_bytes(&event)
        );
    }

    #[test]
    fn a_plain_message_is_not_a_cloudevent() {
        assert!(matches!(
            from_message(None, b"{}"),
            Err(BindingError::NotACloudEvent)
        ));
        let mut headers = HeaderMap::new();
        headers.insert("ce-specversion", "1.0");
        assert!(
            from_message(Some(&headers), b"").is_err(),
            "id, source, type missing"
        );
    }

    /// The view agrees with the full decoder: both refuse, or both read the same id,
    /// type, time and data.
    fn same_as_decoder(headers: &HeaderMap, payload: &[u8]) -> Option<bool> {
        match (
            view(Some(headers), payload),
            from_message(Some(headers), payload),
        ) {
            (Ok(v), Ok(e)) => {
                assert_eq!(v.id, e.id());
                assert_eq!(v.ty, e.ty());
                assert_eq!(v.time.as_ref(), e.time());
                assert_eq!(*v.data, *crate::envelope::data_bytes(&e));
                Some(matches!(v.data, Cow::Borrowed(_)))
            }
            (Err(_), Err(_)) => None,
            (v, e) => panic!("view {:?}, decoder {:?}", v.is_ok(), e.is_ok()),
        }
    }

    #[test]
    fn the_view_reads_our_binary_mode_without_building_an_event() {
        let msg = to_binary(sample()).unwrap();
        let v = view(Some(&msg.headers), &msg.payload).unwrap();
        assert!(matches!(v.data, Cow::Borrowed(_)), "the fast path");
        assert_eq!(v.id, "hs-1-abc");
        assert_eq!(v.ty, "crmsync.contact.updated.v1");
        assert_eq!(v.time_or_epoch().to_rfc3339(), "2019-07-26T04:00:00+00:00");
        assert_eq!(&*v.data, br#"{"a":1}"#);
        assert_eq!(same_as_decoder(&msg.headers, &msg.payload), Some(true));
    }

    #[test]
    fn the_view_of_other_forms_is_the_decoders() {
        // Mixed-case names, quoted values, structured mode: the full decoder reads them.
        let mut headers = HeaderMap::new();
        headers.insert("CE-SpecVersion", "1.0");
        headers.insert("Ce-Id", "x");
        headers.insert("ce-SOURCE", "/s");
        headers.insert("ce-type", "\"t%20u\"");
        assert_eq!(same_as_decoder(&headers, b"d"), Some(false));
        assert_eq!(view(Some(&headers), b"d").unwrap().ty, "t u");
        let mut structured = HeaderMap::new();
        structured.insert("content-type", "application/cloudevents+json");
        let json = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(same_as_decoder(&structured, &json), Some(false));
        assert!(view(None, b"{}").is_err());
    }

    #[test]
    fn the_view_refuses_what_the_decoder_refuses() {
        let base = |skip: &str, extra: Option<(&str, &str)>| {
            let mut h = HeaderMap::new();
            for (n, v) in [
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
            ] {
                if n != skip {
                    h.insert(n, v);
                }
            }
            if let Some((n, v)) = extra {
                h.insert(n, v);
            }
            h
        };
        assert_eq!(same_as_decoder(&base("", None), b""), Some(true));
        for headers in [
            base("ce-source", None),
            base("ce-id", None),
            base("ce-type", None),
            base("", Some(("ce-time", "yesterday"))),
            base("", Some(("ce-dataschema", "not a url"))),
            base("", Some(("ce-specversion", "2.0"))),
            base("", Some(("ce-crm_attempt", "1"))),
            base("", Some(("ce-x", "%FF"))),
            base("", Some(("content-type", "%C0%A0"))),
        ] {
            assert_eq!(same_as_decoder(&headers, b"{}"), None, "{headers:?}");
        }
    }

    proptest! {
        #[test]
        fn the_view_agrees_with_the_decoder(
            picks in proptest::collection::vec((0usize..14, 0usize..9), 0..10),
            payload in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            const NAMES: [&str; 14] = [
                "ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time",
                "ce-dataschema", "ce-subject", "ce-crmattempt", "CE-ID", "Ce-Type",
                "content-type", "Content-Type", "ce-bad_name", "x-other",
            ];
            const VALUES: [&str; 9] = [
                "1.0", "0.3", "abc", "2019-07-26T04:00:00Z", "http://x/schema",
                "application/cloudevents+json", "%FF", "\"q%20\"", "a%20b",
            ];
            let mut headers = HeaderMap::new();
            for (n, v) in picks {
                headers.append(NAMES[n], VALUES[v]);
            }
            same_as_decoder(&headers, &payload);
        }

        #[test]
        fn any_attribute_text_round_trips(value in "\\PC{0,60}") {
            let encoded = encode_header_value(&value);
            prop_assert!(encoded.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            prop_assert_eq!(decode_header_value(&encoded).unwrap(), value);
        }
    }
}
