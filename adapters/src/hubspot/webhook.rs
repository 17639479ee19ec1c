//! HubSpot webhooks: signature verification (v1, v2, v3) and parsing of event batches.
//!
//! The key is the app's client secret and every byte of the request counts:
//! - v1 `X-HubSpot-Signature`: `hex(sha256(secret + body))`;
//! - v2 (`X-HubSpot-Signature-Version: v2`): `hex(sha256(secret + METHOD + uri + body))`;
//! - v3 `X-HubSpot-Signature-v3` with `X-HubSpot-Request-Timestamp` (ms):
//!   `base64(hmac_sha256(secret, METHOD + uri + body + timestamp))`, refused when the
//!   timestamp is more than five minutes from now.
//!
//! Every comparison is constant-time.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crmsync_schema::envelope::representable;
use crmsync_schema::{Change, ObjectType, Provider, RawEvent, RemoteId, WorkspaceId};

pub const SIGNATURE: &str = "x-hubspot-signature";
pub const SIGNATURE_VERSION: &str = "x-hubspot-signature-version";
pub const SIGNATURE_V3: &str = "x-hubspot-signature-v3";
pub const TIMESTAMP: &str = "x-hubspot-request-timestamp";

/// How far a v3 timestamp may be from now, either way.
pub const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// Which signature scheme a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    V1,
    V2,
    V3,
}

impl SignatureVersion {
    pub const fn as_str(self) -> &'static str {
        match self {
            SignatureVersion::V1 => "v1",
            SignatureVersion::V2 => "v2",
            SignatureVersion::V3 => "v3",
        }
    }
}

/// Which signatures [`verify`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accept {
    /// v3 only, the default. HubSpot signs every request to an app with v3 (and with
    /// v1 or v2 beside it, for older receivers); its timestamp bounds the replay of a
    /// captured request to five minutes.
    #[default]
    V3,
    /// v3 when the request carries it, else v1 or v2. Neither of those covers a time,
    /// so a request captured once verifies for good: only JetStream's duplicate
    /// window keeps its events from being stored again.
    Legacy,
}

/// Why a signature was refused. The messages are safe to show the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no X-HubSpot-Signature or X-HubSpot-Signature-v3 header")]
    Missing,
    #[error("X-HubSpot-Signature-Version must be v1 or v2")]
    UnknownVersion,
    #[error("X-HubSpot-Request-Timestamp is missing or not a number of milliseconds")]
    BadTimestamp,
    #[error("X-HubSpot-Request-Timestamp is more than 5 minutes from now")]
    StaleTimestamp,
    #[error("the signature does not match the request")]
    Mismatch,
    #[error("only a v3 signature is accepted: X-HubSpot-Signature-v3 is missing")]
    LegacyRefused,
}

/// The parts of a webhook request that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The URI as HubSpot called it: scheme, host, path and query.
    pub uri: &'a str,
    pub body: &'a [u8],
    pub signature: Option<&'a str>,
    pub signature_version: Option<&'a str>,
    pub signature_v3: Option<&'a str>,
    pub timestamp: Option<&'a str>,
}

fn sha256_hex_input(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hmac_v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(method.as_bytes());
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp.as_bytes());
    mac
}

pub fn sign_v1(secret: &[u8], body: &[u8]) -> String {
    hex::encode(sha256_hex_input(&[secret, body]))
}

pub fn sign_v2(secret: &[u8], method: &str, uri: &str, body: &[u8]) -> String {
    hex::encode(sha256_hex_input(&[
        secret,
        method.as_bytes(),
        uri.as_bytes(),
        body,
    ]))
}

pub fn sign_v3(secret: &[u8], method: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> String {
    let mac = hmac_v3(secret, method, uri, body, &timestamp_ms.to_string());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn hex_matches(expected: &[u8; 32], given: &str) -> bool {
    match hex::decode(given.trim()) {
        Ok(given) => expected.as_slice().ct_eq(&given).into(),
        Err(_) => false,
    }
}

/// Checks the request's signature with `secret`, as HubSpot computes it: v3 when
/// present, else v1 or v2 where `accept` allows them.
pub fn verify(
    req: &SignedRequest<'_>,
    secret: &[u8],
    now: DateTime<Utc>,
    accept: Accept,
) -> Result<SignatureVersion, VerifyError> {
    if let Some(sig) = req.signature_v3 {
        let ts = req.timestamp.ok_or(VerifyError::BadTimestamp)?;
        let ms: i64 = ts.trim().parse().map_err(|_| VerifyError::BadTimestamp)?;
        if now.timestamp_millis().abs_diff(ms) > MAX_SKEW_MS.unsigned_abs() {
            return Err(VerifyError::StaleTimestamp);
        }
        let given = base64::engine::general_purpose::STANDARD
            .decode(sig.trim())
            .map_err(|_| VerifyError::Mismatch)?;
        return hmac_v3(secret, req.method, req.uri, req.body, ts.trim())
            .verify_slice(&given)
            .map(|()| SignatureVersion::V3)
            .map_err(|_| VerifyError::Mismatch);
    }
    let sig = req.signature.ok_or(VerifyError::Missing)?;
    if accept == Accept::V3 {
        return Err(VerifyError::LegacyRefused);
    }
    let version = match req.signature_version.map(str::trim) {
        None | Some("v1") => SignatureVersion::V1,
        Some("v2") => SignatureVersion::V2,
        Some(_) => return Err(VerifyError::UnknownVersion),
    };
    let expected = match version {
        SignatureVersion::V1 => sha256_hex_input(&[secret, req.body]),
        _ => sha256_hex_input(&[secret, req.method.as_bytes(), req.uri.as_bytes(), req.body]),
    };
    if hex_matches(&expected, sig) {
        Ok(version)
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Why a webhook body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not a JSON array of HubSpot events: {0}")]
    NotAnArray(String),
    #[error("event {index} is not a valid HubSpot event: {reason}")]
    BadEvent { index: usize, reason: String },
}

/// An id HubSpot may send as a number or a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsId(pub String);

impl<'de> Deserialize<'de> for HsId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => Ok(HsId(n.to_string())),
            Value::String(s) if !s.is_empty() => Ok(HsId(s)),
            other => Err(serde::de::Error::custom(format!(
                "expected an id (number or string), found {other}"
            ))),
        }
    }
}

/// One HubSpot webhook event, as documented.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    pub event_id: HsId,
    pub portal_id: HsId,
    pub occurred_at: i64,
    pub subscription_type: String,
    /// Absent on association changes, which name `fromObjectId` instead.
    #[serde(default)]
    pub object_id: Option<HsId>,
    #[serde(default)]
    pub from_object_id: Option<HsId>,
    #[serde(default)]
    pub subscription_id: Option<HsId>,
    #[serde(default)]
    pub app_id: Option<HsId>,
    #[serde(default)]
    pub attempt_number: Option<u32>,
    #[serde(default)]
    pub change_source: Option<String>,
    #[serde(default)]
    pub change_flag: Option<String>,
    #[serde(default)]
    pub property_name: Option<String>,
    #[serde(default)]
    pub property_value: Option<Value>,
    #[serde(default)]
    pub primary_object_id: Option<HsId>,
    #[serde(default)]
    pub merged_object_ids: Vec<HsId>,
    #[serde(default)]
    pub new_object_id: Option<HsId>,
}

impl WebhookEvent {
    /// The record the event is about.
    pub fn record_id(&self) -> Option<&HsId> {
        self.object_id.as_ref().or(self.from_object_id.as_ref())
    }

    /// `contact` of `contact.propertyChange`.
    pub fn object_prefix(&self) -> &str {
        self.subscription_type
            .split_once('.')
            .map_or(self.subscription_type.as_str(), |(o, _)| o)
    }

    pub fn change(&self) -> Change {
        match self.subscription_type.split_once('.').map(|(_, c)| c) {
            Some("creation") => Change::Created,
            Some("propertyChange") => Change::Updated,
            Some("deletion" | "privacyDeletion") => Change::Deleted,
            Some("restore") => Change::Restored,
            Some("merge") => Change::Merged,
            Some("associationChange") => Change::AssociationChanged,
            _ => Change::Other,
        }
    }

    pub fn time(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.occurred_at)
            .single()
            .unwrap_or_default()
    }
}

/// A parsed event with the exact bytes it arrived as.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub event: WebhookEvent,
    pub raw: Box<RawValue>,
}

/// Parses a webhook body: a JSON array of events, each kept verbatim beside its
/// typed form.
pub fn parse_batch(body: &[u8]) -> Result<Vec<ReceivedEvent>, ParseError> {
    let raws: Vec<Box<RawValue>> =
        serde_json::from_slice(body).map_err(|e| ParseError::NotAnArray(e.to_string()))?;
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let event = parse_one(index, &raw)?;
            Ok(ReceivedEvent { event, raw })
        })
        .collect()
}

fn object_type(event: &WebhookEvent) -> Result<ObjectType, String> {
    ObjectType::parse(event.object_prefix().to_ascii_lowercase())
        .map_err(|e| format!("subscriptionType: {e}"))
}

/// A verified webhook body: every element becomes a raw event; the ones that could
/// not be read are kept verbatim as `unparsed` events rather than refused, because
/// HubSpot never retries a 4xx and the whole batch would be lost.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Vec<RawEvent>,
    /// (index, reason) of the elements stored as `unparsed`.
    pub unparsed: Vec<(usize, String)>,
}

/// Reads a verified webhook body. Only a body that is not a JSON array is refused.
pub fn receive_batch(body: &[u8]) -> Result<Batch, ParseError> {
    let raws: Vec<Box<RawValue>> =
        serde_json::from_slice(body).map_err(|e| ParseError::NotAnArray(e.to_string()))?;
    let mut batch = Batch {
        events: Vec::with_capacity(raws.len()),
        unparsed: Vec::new(),
    };
    for (index, raw) in raws.into_iter().enumerate() {
        let parsed = parse_one(index, &raw).and_then(|event| {
            ReceivedEvent {
                event,
                raw: raw.clone(),
            }
            .to_raw_event(index)
        });
        match parsed {
            Ok(event) => batch.events.push(event),
            Err(e) => {
                batch.unparsed.push((index, e.to_string()));
                batch.events.push(unparsed_event(&raw));
            }
        }
    }
    Ok(batch)
}

/// An element crmsync could not read, stored as it came under
/// `crm.raw.hubspot.<portal or unknown>.unparsed.<digest>`.
fn unparsed_event(raw: &RawValue) -> RawEvent {
    let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    let portal = match value.get("portalId") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= WorkspaceId::MAX_LEN => s.clone(),
        _ => "unknown".to_owned(),
    };
    let digest = digest(raw);
    let id = format!("hs-unparsed-{digest}");
    RawEvent {
        provider: Provider::HubSpot,
        workspace: WorkspaceId::parse(portal)
            .unwrap_or_else(|_| WorkspaceId::parse("unknown").expect("valid")),
        object: ObjectType::parse("unparsed").expect("valid object type"),
        id: RemoteId::parse(digest).expect("a hex digest is a valid id"),
        change: Change::Other,
        version: id.clone(),
        event_id: id,
        time: chrono::Utc::now(),
        data: raw.get().as_bytes().to_vec(),
    }
}

fn parse_one(index: usize, raw: &RawValue) -> Result<WebhookEvent, ParseError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let event: WebhookEvent =
        serde_path_to_error::deserialize(&mut de).map_err(|e| ParseError::BadEvent {
            index,
            reason: match e.path().to_string().as_str() {
                "." => e.inner().to_string(),
                path => format!("{path}: {}", e.inner()),
            },
        })?;
    object_type(&event).map_err(|reason| ParseError::BadEvent { index, reason })?;
    if !Utc
        .timestamp_millis_opt(event.occurred_at)
        .single()
        .is_some_and(representable)
    {
        return Err(ParseError::BadEvent {
            index,
            reason: format!(
                "occurredAt: {} ms is not a time between the years 0 and 9999",
                event.occurred_at
            ),
        });
    }
    Ok(event)
}

/// A digest of the event without `attemptNumber`, so that HubSpot's retries of one
/// event share an id and distinct events sharing an `eventId` do not.
fn digest(raw: &RawValue) -> String {
    let canonical = match serde_json::from_str::<Value>(raw.get()) {
        Ok(mut value) => {
            if let Value::Object(map) = &mut value {
                map.remove("attemptNumber");
            }
            serde_json::to_vec(&value).unwrap_or_default()
        }
        // Valid JSON that serde_json cannot hold as a value (a number beyond f64),
        // found by fuzzing: its members verbatim, still without `attemptNumber`, so
        // that retries share an id and two such events never do.
        Err(_) => match serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw.get()) {
            Ok(mut members) => {
                members.remove("attemptNumber");
                serde_json::to_vec(&members).unwrap_or_default()
            }
            Err(_) => raw.get().as_bytes().to_vec(),
        },
    };
    hex::encode(&Sha256::digest(&canonical)[..8])
}

impl ReceivedEvent {
    /// The raw CloudEvent to store for this event, the `index`-th of its batch.
    pub fn to_raw_event(&self, index: usize) -> Result<RawEvent, ParseError> {
        let bad = |reason: String| ParseError::BadEvent { index, reason };
        let e = &self.event;
        let id = format!(
            "hs-{}-{}-{}",
            e.event_id.0,
            e.occurred_at,
            digest(&self.raw)
        );
        Ok(RawEvent {
            provider: Provider::HubSpot,
            workspace: WorkspaceId::parse(e.portal_id.0.clone())
                .map_err(|err| bad(format!("portalId: {err}")))?,
            object: object_type(e).map_err(bad)?,
            id: RemoteId::parse(e.record_id().map(|i| i.0.clone()).unwrap_or_default())
                .map_err(|err| bad(format!("objectId: {err}")))?,
            change: e.change(),
            version: id.clone(),
            event_id: id,
            time: e.time(),
            data: self.raw.get().as_bytes().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const BODY: &[u8] = br#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
    const URI: &str = "https://crm.example.com/crm/webhooks/hubspot?x=1&a=2";

    fn req<'a>(body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            uri: URI,
            body,
            signature: None,
            signature_version: None,
            signature_v3: None,
            timestamp: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()
    }

    #[test]
    fn the_published_v1_vector_verifies() {
        let expected = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de";
        assert_eq!(sign_v1(SECRET, BODY), expected);
        let r = SignedRequest {
            signature: Some(expected),
            ..req(BODY)
        };
        assert_eq!(
            verify(&r, SECRET, now(), Accept::Legacy),
            Ok(SignatureVersion::V1)
        );
        let upper = expected.to_uppercase();
        let r = SignedRequest {
            signature: Some(&upper),
            signature_version: Some("v1"),
            ..req(BODY)
        };
        assert_eq!(
            verify(&r, SECRET, now(), Accept::Legacy),
            Ok(SignatureVersion::V1)
        );
    }

    #[test]
    fn v2_covers_method_and_uri() {
        let sig = sign_v2(SECRET, "POST", URI, BODY);
        let good = SignedRequest {
            signature: Some(&sig),
            signature_version: Some("v2"),
            ..req(BODY)
        };
        assert_eq!(
            verify(&good, SECRET, now(), Accept::Legacy),
            Ok(SignatureVersion::V2)
        );
        let reordered = SignedRequest {
            uri: "https://crm.example.com/crm/webhooks/hubspot?a=2&x=1",
            ..good
        };
        assert_eq!(
            verify(&reordered, SECRET, now(), Accept::Legacy),
            Err(VerifyError::Mismatch)
        );
        let as_v1 = SignedRequest {
            signature_version: None,
            ..good
        };
        assert_eq!(
            verify(&as_v1, SECRET, now(), Accept::Legacy),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn v3_checks_the_hmac_and_the_timestamp_window() {
        let cases: [(i64, Result<SignatureVersion, VerifyError>); 5] = [
            (0, Ok(SignatureVersion::V3)),
            (-MAX_SKEW_MS, Ok(SignatureVersion::V3)),
            (-MAX_SKEW_MS - 1, Err(VerifyError::StaleTimestamp)),
            (MAX_SKEW_MS + 1, Err(VerifyError::StaleTimestamp)),
            (MAX_SKEW_MS, Ok(SignatureVersion::V3)),
        ];
        for (offset, want) in cases {
            let ts = now().timestamp_millis() + offset;
            let sig = sign_v3(SECRET, "POST", URI, BODY, ts);
            let ts = ts.to_string();
            let r = SignedRequest {
                signature_v3: Some(&sig),
                timestamp: Some(&ts),
                ..req(BODY)
            };
            assert_eq!(
                verify(&r, SECRET, now(), Accept::Legacy),
                want,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn a_signature_wrong_by_one_byte_is_refused() {
        let mut body = BODY.to_vec();
        let sig = sign_v1(SECRET, &body);
        body[10] ^= 1;
        let r = SignedRequest {
            signature: Some(&sig),
            ..req(&body)
        };
        assert_eq!(
            verify(&r, SECRET, now(), Accept::Legacy),
            Err(VerifyError::Mismatch)
        );

        let ts = now().timestamp_millis();
        let mut sig = sign_v3(SECRET, "POST", URI, BODY, ts).into_bytes();
        sig[3] = if sig[3] == b'A' { b'B' } else { b'A' };
        let sig = String::from_utf8(sig).unwrap();
        let ts = ts.to_string();
        let r = SignedRequest {
            signature_v3: Some(&sig),
            timestamp: Some(&ts),
            ..req(BODY)
        };
        assert_eq!(
            verify(&r, SECRET, now(), Accept::Legacy),
            Err(VerifyError::Mismatch)
        );
        let r = SignedRequest {
            signature: Some("zz"),
            ..req(BODY)
        };
        assert_eq!(
            verify(&r, SECRET, now(), Accept::Legacy),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_panic() {
        for ts in [i64::MIN.to_string(), i64::MAX.to_string()] {
            let r = SignedRequest {
                signature_v3: Some("AAAA"),
                timestamp: Some(&ts),
                ..req(BODY)
            };
            assert_eq!(
                verify(&r, SECRET, now(), Accept::Legacy),
                Err(VerifyError::StaleTimestamp)
            );
        }
    }

    #[test]
    fn unreadable_elements_are_kept_as_unparsed_events_not_refused() {
        let body = br#"[{"eventId":1,"portalId":7,"occurredAt":1,"subscriptionType":"contact.creation","objectId":5},{"eventId":2,"portalId":7},3,{"eventId":4,"portalId":7,"occurredAt":2,"subscriptionType":"contact.associationChange","fromObjectId":5,"toObjectId":9}]"#;
        let batch = receive_batch(body).unwrap();
        assert_eq!(batch.events.len(), 4);
        let indices: Vec<usize> = batch.unparsed.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, [1, 2]);
        let unparsed = &batch.events[1];
        assert_eq!(unparsed.object.as_str(), "unparsed");
        assert_eq!(unparsed.workspace.as_str(), "7");
        assert_eq!(unparsed.data, br#"{"eventId":2,"portalId":7}"#);
        assert_eq!(batch.events[2].workspace.as_str(), "unknown");
        assert_eq!(
            batch.events[3].id.as_str(),
            "5",
            "association changes name fromObjectId"
        );
        assert!(receive_batch(b"{}").is_err());
        let again = receive_batch(body).unwrap();
        assert_eq!(again.events[1].dedupe_key(), batch.events[1].dedupe_key());
    }

    #[test]
    fn v1_and_v2_alone_are_refused_unless_legacy_signatures_are_accepted() {
        let ts = now().timestamp_millis();
        let v3 = sign_v3(SECRET, "POST", URI, BODY, ts);
        let ts = ts.to_string();
        let signed = SignedRequest {
            signature_v3: Some(&v3),
            timestamp: Some(&ts),
            ..req(BODY)
        };
        assert_eq!(
            verify(&signed, SECRET, now(), Accept::V3),
            Ok(SignatureVersion::V3)
        );
        let v1 = sign_v1(SECRET, BODY);
        let v2 = sign_v2(SECRET, "POST", URI, BODY);
        for (sig, version) in [(&v1, "v1"), (&v2, "v2")] {
            // As HubSpot sends it, both: the v3 decides.
            let both = SignedRequest {
                signature: Some(sig),
                signature_version: Some(version),
                ..signed
            };
            assert_eq!(
                verify(&both, SECRET, now(), Accept::V3),
                Ok(SignatureVersion::V3)
            );
            // The v3 headers stripped (a captured request replayed): refused.
            let alone = SignedRequest {
                signature_v3: None,
                timestamp: None,
                ..both
            };
            assert_eq!(
                verify(&alone, SECRET, now(), Accept::V3),
                Err(VerifyError::LegacyRefused),
                "{version}"
            );
            assert!(verify(&alone, SECRET, now(), Accept::Legacy).is_ok());
        }
    }

    #[test]
    fn missing_or_odd_headers_are_refused_clearly() {
        assert_eq!(
            verify(&req(BODY), SECRET, now(), Accept::Legacy),
            Err(VerifyError::Missing)
        );
        let r = SignedRequest {
            signature: Some("00"),
            signature_version: Some("v9"),
            ..req(BODY)
        };
        assert_eq!(
            verify(&r, SECRET, now(), Accept::Legacy),
            Err(VerifyError::UnknownVersion)
        );
        let r = SignedRequest {
            signature_v3: Some("AAAA"),
            timestamp: Some("yesterday"),
            ..req(BODY)
        };
        assert_eq!(
            verify(&r, SECRET, now(), Accept::Legacy),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn batches_parse_into_raw_events_that_keep_the_bytes() {
        let events = parse_batch(BODY).unwrap();
        assert_eq!(events.len(), 1);
        let raw = events[0].to_raw_event(0).unwrap();
        assert_eq!(raw.workspace.as_str(), "62515");
        assert_eq!(raw.object.as_str(), "contact");
        assert_eq!(raw.id.as_str(), "123");
        assert_eq!(raw.change, Change::Created);
        assert_eq!(raw.time.timestamp_millis(), 1_564_113_600_000);
        assert_eq!(raw.data, &BODY[1..BODY.len() - 1]);
        assert!(raw.event_id.starts_with("hs-1-1564113600000-"));
    }

    #[test]
    fn retries_share_an_id_and_distinct_events_do_not() {
        let retry =
            String::from_utf8_lossy(BODY).replace("\"attemptNumber\":0", "\"attemptNumber\":3");
        let other = String::from_utf8_lossy(BODY).replace("\"objectId\":123", "\"objectId\":124");
        let id = |b: &[u8]| parse_batch(b).unwrap()[0].to_raw_event(0).unwrap().event_id;
        assert_eq!(id(BODY), id(retry.as_bytes()));
        assert_ne!(id(BODY), id(other.as_bytes()));
    }

    #[test]
    fn elements_beyond_f64_are_told_apart_but_their_retries_are_not() {
        let id = |b: &str| {
            receive_batch(b.as_bytes()).unwrap().events[0]
                .event_id
                .clone()
        };
        let first = r#"[{"portalId": 1, "n": 1e999, "attemptNumber": 0}]"#;
        assert_eq!(
            id(first),
            id(&first.replace("\"attemptNumber\": 0", "\"attemptNumber\": 3"))
        );
        assert_ne!(id(first), id(&first.replace("1e999", "2e999")));
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_reason() {
        let cases: [&[u8]; 7] = [
            b"",
            b"{}",
            b"[1]",
            b"[{\"eventId\":1}]",
            br#"[{"eventId":1,"portalId":1,"occurredAt":1,"subscriptionType":"Contact*.x","objectId":1}]"#,
            br#"[{"eventId":1,"portalId":1,"occurredAt":"soon","subscriptionType":"contact.creation"}]"#,
            b"\xff\xfe",
        ];
        for body in cases {
            assert!(
                parse_batch(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse_batch(b"[]").unwrap().is_empty());
    }
}
