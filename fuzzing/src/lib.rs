//! What the fuzz targets check, one function per target.
//!
//! Each takes the fuzzer's bytes and panics when a property fails: parsers of
//! untrusted input must refuse it with an error, never panic, and what they accept
//! must survive the way through the engine (a valid subject that reads back, a
//! CloudEvent that decodes to itself, a signature that a one-byte change breaks).
//!
//! `fuzz/` (cargo fuzz, nightly) calls these from libFuzzer; `tests/corpus.rs` runs
//! them over the corpus kept in `fuzz/corpus/` on stable, so every input the
//! fuzzer ever kept is checked on each test run.

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::HeaderMap;
use base64::Engine as _;
use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::value::RawValue;

use crmsync_adapters::hubspot::webhook::{self, Accept, SignedRequest, VerifyError};
use crmsync_adapters::zoho::notification::Notification;
use crmsync_schema::binding::{self, decode_header_value, encode_header_value};
use crmsync_schema::cloudevents::{AttributesReader, Data, Event};
use crmsync_schema::envelope::data_bytes;
use crmsync_schema::subject::{escape_token, unescape_token};
use crmsync_schema::{RawEvent, Subjects, WorkspaceId};

/// The fuzz targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
/// A check: panics when its property fails for the input.
pub type Check = fn(&[u8]);

pub const TARGETS: [(&str, Check); 4] = [
    ("hubspot_webhook", hubspot_webhook),
    ("zoho_notification", zoho_notification),
    ("subject_token", subject_token),
    ("cloudevent_binary", cloudevent_binary),
];

const SECRET: &[u8] = b"fuzz-client-secret";
const URI: &str = "https://crmsync.example/crm/webhooks/hubspot";

/// The instant every check treats as now, so a run is repeatable.
fn now() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_790_000_000_000)
        .single()
        .expect("a valid instant")
}

/// Splits the input at `0xFF` bytes (never part of UTF-8) into at most `n` parts.
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |&b| b == 0xFF).collect()
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// A subject NATS accepts for a publish: dot-separated non-empty tokens, without
/// wildcards or whitespace.
fn assert_publishable(subject: &str) {
    assert!(
        subject.split('.').all(|t| !t.is_empty()
            && t != "*"
            && t != ">"
            && !t
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())),
        "not a publishable subject: {subject:?}"
    );
}

/// The raw event's subject reads back to its parts, its dedupe key is one header
/// value, and its CloudEvent survives the binary binding unchanged.
fn assert_storable(event: &RawEvent) {
    let subjects = Subjects::new(None).expect("the default root");
    let subject = event.subject(&subjects);
    assert_publishable(&subject);
    let read = subjects
        .parse_raw(&subject)
        .expect("our own subject parses");
    assert_eq!(read.provider, event.provider);
    assert_eq!(read.workspace, event.workspace);
    assert_eq!(read.object, event.object);
    assert_eq!(read.id, event.id);
    let key = event.dedupe_key();
    assert!(
        HeaderValue::from_str(&key).is_ok(),
        "dedupe key is not a header value: {key:?}"
    );
    let ce = event.to_cloudevent();
    let message = binding::to_binary(ce.clone()).expect("our CloudEvent encodes");
    let back = binding::from_message(Some(&message.headers), &message.payload)
        .expect("our encoding decodes");
    assert_eq!(back, ce, "the binary binding changed the event");
}

/// `base` signed the v1/v2 way instead.
fn legacy<'a>(base: SignedRequest<'a>, signature: &'a str, version: &'a str) -> SignedRequest<'a> {
    SignedRequest {
        signature: Some(signature),
        signature_version: Some(version),
        signature_v3: None,
        timestamp: None,
        ..base
    }
}

/// HubSpot webhooks: any headers are refused without a panic; a body signed with the
/// secret verifies under v3, and under v1 or v2 only where legacy signatures are
/// accepted; one changed byte of signature or body, or
/// a timestamp outside the window, is refused; whatever a batch holds is stored
/// (parsed or as `unparsed`) with a valid subject.
///
/// Input: `body 0xFF signature 0xFF version 0xFF signature_v3 0xFF timestamp`.
pub fn hubspot_webhook(data: &[u8]) {
    let p = parts(data, 5);
    let body = p[0];
    let field = |i: usize| p.get(i).map(|b| text(b));
    let (sig, version, sig3, ts) = (field(1), field(2), field(3), field(4));
    let arbitrary = SignedRequest {
        method: "POST",
        uri: URI,
        body,
        signature: sig.as_deref(),
        signature_version: version.as_deref(),
        signature_v3: sig3.as_deref(),
        timestamp: ts.as_deref(),
    };
    // Random bytes cannot forge a MAC, even where v1 and v2 are accepted; a success
    // would mean the check is broken.
    assert!(
        webhook::verify(&arbitrary, SECRET, now(), Accept::Legacy).is_err(),
        "an unsigned request verified"
    );

    let ms = now().timestamp_millis();
    let v3 = webhook::sign_v3(SECRET, "POST", URI, body, ms);
    let signed = SignedRequest {
        method: "POST",
        uri: URI,
        body,
        signature: None,
        signature_version: None,
        signature_v3: Some(&v3),
        timestamp: Some(&ms.to_string()),
    };
    assert_eq!(
        webhook::verify(&signed, SECRET, now(), Accept::V3),
        Ok(webhook::SignatureVersion::V3)
    );
    let v1 = webhook::sign_v1(SECRET, body);
    let v2 = webhook::sign_v2(SECRET, "POST", URI, body);
    let legacy = |signature, version| legacy(signed, signature, version);
    for (request, version) in [
        (legacy(&v1, "v1"), webhook::SignatureVersion::V1),
        (legacy(&v2, "v2"), webhook::SignatureVersion::V2),
    ] {
        let verify = |accept| webhook::verify(&request, SECRET, now(), accept);
        assert_eq!(verify(Accept::Legacy), Ok(version));
        assert_eq!(verify(Accept::V3), Err(VerifyError::LegacyRefused));
    }

    // One byte off, chosen by the input, anywhere in the signature or the body.
    let pick = data.len();
    let mut mac = base64::engine::general_purpose::STANDARD
        .decode(&v3)
        .expect("our own base64");
    let at = pick % mac.len();
    mac[at] ^= 1 << (pick % 8);
    let forged = base64::engine::general_purpose::STANDARD.encode(&mac);
    let refused = |req: SignedRequest<'_>, why: VerifyError| {
        let verified = webhook::verify(&req, SECRET, now(), Accept::Legacy);
        assert_eq!(verified, Err(why), "{req:?}");
    };
    refused(
        SignedRequest {
            signature_v3: Some(&forged),
            ..signed
        },
        VerifyError::Mismatch,
    );
    if !body.is_empty() {
        let mut changed = body.to_vec();
        changed[pick % body.len()] ^= 1 << (pick % 8);
        refused(
            SignedRequest {
                body: &changed,
                ..signed
            },
            VerifyError::Mismatch,
        );
        refused(
            SignedRequest {
                body: &changed,
                ..legacy(&v1, "v1")
            },
            VerifyError::Mismatch,
        );
    }
    let mut hex = v2.clone().into_bytes();
    let at = pick % hex.len();
    hex[at] = if hex[at] == b'0' { b'1' } else { b'0' };
    let hex = String::from_utf8(hex).expect("hex is ASCII");
    refused(legacy(&hex, "v2"), VerifyError::Mismatch);
    let skew = webhook::MAX_SKEW_MS + 1 + (pick as i64 % 1_000_000);
    for stale in [ms - skew, ms + skew] {
        let sig = webhook::sign_v3(SECRET, "POST", URI, body, stale);
        refused(
            SignedRequest {
                signature_v3: Some(&sig),
                timestamp: Some(&stale.to_string()),
                ..signed
            },
            VerifyError::StaleTimestamp,
        );
    }

    if let Ok(batch) = webhook::receive_batch(body) {
        let elements: Vec<&RawValue> =
            serde_json::from_slice(body).expect("receive_batch accepted a JSON array");
        assert_eq!(batch.events.len(), elements.len(), "an element was lost");
        let mut by_key: HashMap<String, &RawEvent> = HashMap::new();
        for event in &batch.events {
            assert_storable(event);
            // Two events share a dedupe key (and one would be dropped) only when they
            // are one event sent twice: equal but for HubSpot's attempt number.
            if let Some(first) = by_key.insert(event.dedupe_key(), event) {
                assert_eq!(
                    without_attempt(&first.data),
                    without_attempt(&event.data),
                    "distinct events share the dedupe key {}",
                    event.dedupe_key()
                );
            }
        }
    }
}

/// An event's JSON without `attemptNumber`; when serde_json cannot hold it as a
/// value, its members' texts (or its bytes, when it is no object).
fn without_attempt(data: &[u8]) -> Result<serde_json::Value, Vec<(String, String)>> {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(mut value) => {
            if let Some(map) = value.as_object_mut() {
                map.remove("attemptNumber");
            }
            Ok(value)
        }
        Err(_) => Err(
            match serde_json::from_slice::<std::collections::BTreeMap<String, &RawValue>>(data) {
                Ok(members) => members
                    .into_iter()
                    .filter(|(k, _)| k != "attemptNumber")
                    .map(|(k, v)| (k, v.get().to_owned()))
                    .collect(),
                Err(_) => vec![(String::new(), String::from_utf8_lossy(data).into_owned())],
            },
        ),
    }
}

/// Zoho callbacks: any body is refused or read without a panic; the echoed token
/// never reaches a stored event; each event has a valid subject.
pub fn zoho_notification(data: &[u8]) {
    let Ok(notification) = Notification::parse(data) else {
        return;
    };
    let org = WorkspaceId::parse("org-1").expect("valid");
    let Ok(events) = notification.events(&org) else {
        return;
    };
    assert_eq!(events.len(), notification.ids.len());
    for event in &events {
        assert_storable(event);
        let stored: serde_json::Value =
            serde_json::from_slice(&event.data).expect("stored data is JSON");
        assert!(stored.get("token").is_none(), "the token was stored");
    }
}

/// Subject tokens: any text escapes to one publishable token and back; unescaping
/// accepts only what escaping produces; a raw subject parses only into parts that
/// rebuild it.
pub fn subject_token(data: &[u8]) {
    let s = text(data);
    let token = escape_token(&s);
    assert_publishable(&token);
    assert!(!token.contains('.'), "escaped token holds a dot: {token:?}");
    assert_eq!(unescape_token(&token).expect("our own token"), s);
    if let Ok(original) = unescape_token(&s) {
        assert_eq!(escape_token(&original), s, "two tokens for one text");
    }
    let value = encode_header_value(&s);
    assert!(HeaderValue::from_str(&value).is_ok(), "{value:?}");
    assert_eq!(decode_header_value(&value).expect("our own header"), s);

    let subjects = Subjects::new(None).expect("the default root");
    if let Ok(raw) = subjects.parse_raw(&s) {
        assert_eq!(
            subjects.raw(raw.provider, &raw.workspace, &raw.object, &raw.id),
            s
        );
    }
}

/// CloudEvents from NATS: any headers and payload decode or are refused without a
/// panic; a decoded event encodes in binary mode and decodes to itself.
///
/// Input: header lines `name: value` separated by `\n`, then `0xFF`, then the payload.
pub fn cloudevent_binary(data: &[u8]) {
    let p = parts(data, 2);
    let mut headers = HeaderMap::new();
    for line in text(p[0]).split('\n') {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            name.trim().parse::<HeaderName>(),
            value.trim().parse::<HeaderValue>(),
        ) {
            headers.append(name, value);
        }
    }
    let payload = p.get(1).copied().unwrap_or_default();
    let decoded = binding::from_message(Some(&headers), payload);
    assert_same_view(binding::view(Some(&headers), payload), &decoded);
    let Ok(event) = decoded else {
        return;
    };
    let message = binding::to_binary(event.clone()).expect("a decoded event encodes");
    let back = binding::from_message(Some(&message.headers), &message.payload)
        .expect("our encoding decodes");
    assert_same(&back, &event);
}

/// The projection's view of a message (read without building an `Event` where it
/// can) accepts exactly what the full decoder accepts, and reads the same id, type,
/// time and data.
fn assert_same_view(
    view: Result<binding::View<'_>, binding::BindingError>,
    decoded: &Result<Event, binding::BindingError>,
) {
    match (view, decoded) {
        (Ok(view), Ok(event)) => {
            assert_eq!(view.id, event.id(), "id");
            assert_eq!(view.ty, event.ty(), "type");
            assert_eq!(view.time.as_ref(), event.time(), "time");
            assert_eq!(&*view.data, data_bytes(event).as_slice(), "data");
        }
        (Err(_), Err(_)) => {}
        (view, decoded) => panic!(
            "the view and the decoder disagree: {:?} against {:?}",
            view.map(|_| "a view"),
            decoded.as_ref().map(|_| "an event")
        ),
    }
}

/// Equal but for the form the SDK keeps data in (bytes for JSON after binary mode)
/// and the JSON content type that binary mode states where structured mode implied it.
fn assert_same(back: &Event, event: &Event) {
    let implied = matches!(event.data(), Some(Data::Json(_))) && event.datacontenttype().is_none();
    let expected_type = if implied {
        Some("application/json")
    } else {
        event.datacontenttype()
    };
    assert_eq!(
        back.datacontenttype(),
        expected_type,
        "content type changed"
    );
    assert_eq!(back.id(), event.id());
    assert_eq!(back.source(), event.source());
    assert_eq!(back.ty(), event.ty());
    assert_eq!(back.subject(), event.subject());
    assert_eq!(back.time(), event.time());
    assert_eq!(back.dataschema(), event.dataschema());
    assert_eq!(back.specversion(), event.specversion());
    let extensions = |e: &Event| {
        e.iter_extensions()
            .map(|(k, v)| (k.to_owned(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(extensions(back), extensions(event), "extensions changed");
    assert_eq!(data_bytes(back), data_bytes(event), "data changed");
}
