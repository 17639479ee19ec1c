//! HubSpot's side of webhooks: event batches as HubSpot sends them, signed as HubSpot
//! signs them (v1, v2, v3).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Which signature HubSpot puts on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    V1,
    V2,
    V3,
}

fn v1(client_secret: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(client_secret.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn v2(client_secret: &str, uri: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(client_secret.as_bytes());
    h.update(b"POST");
    h.update(uri.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

fn v3(client_secret: &str, uri: &str, body: &[u8], timestamp_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(client_secret.as_bytes())
        .expect("HMAC takes keys of any size");
    mac.update(b"POST");
    mac.update(uri.as_bytes());
    mac.update(body);
    mac.update(timestamp_ms.to_string().as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The headers of one signature version alone on `body` posted to `uri` at
/// `timestamp_ms`: what a test needs to exercise one verifier path.
pub fn signed_headers(
    signature: Signature,
    client_secret: &str,
    uri: &str,
    body: &[u8],
    timestamp_ms: i64,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![("Content-Type", "application/json".to_owned())];
    match signature {
        Signature::V1 => {
            headers.push(("X-HubSpot-Signature", v1(client_secret, body)));
            headers.push(("X-HubSpot-Signature-Version", "v1".into()));
        }
        Signature::V2 => {
            headers.push(("X-HubSpot-Signature", v2(client_secret, uri, body)));
            headers.push(("X-HubSpot-Signature-Version", "v2".into()));
        }
        Signature::V3 => {
            headers.push((
                "X-HubSpot-Signature-v3",
                v3(client_secret, uri, body, timestamp_ms),
            ));
            headers.push(("X-HubSpot-Request-Timestamp", timestamp_ms.to_string()));
        }
    }
    headers
}

/// The headers of a delivery, as HubSpot sends them: every request carries the legacy
/// `X-HubSpot-Signature` (v1, or v2 when `signature` is [`Signature::V2`]) with its
/// version, and `X-HubSpot-Signature-v3` with `X-HubSpot-Request-Timestamp`. `uri` must
/// be the URL exactly as the request goes out.
pub fn delivery_headers(
    signature: Signature,
    client_secret: &str,
    uri: &str,
    body: &[u8],
    timestamp_ms: i64,
) -> Vec<(&'static str, String)> {
    let legacy = match signature {
        Signature::V2 => Signature::V2,
        Signature::V1 | Signature::V3 => Signature::V1,
    };
    let mut headers = signed_headers(legacy, client_secret, uri, body, timestamp_ms);
    headers.push((
        "X-HubSpot-Signature-v3",
        v3(client_secret, uri, body, timestamp_ms),
    ));
    headers.push(("X-HubSpot-Request-Timestamp", timestamp_ms.to_string()));
    headers
}

/// The subscription id of a subscription type: one per type, the same for every
/// event of it.
pub fn subscription_id(subscription_type: &str) -> u64 {
    const OBJECTS: [&str; 3] = ["contact", "company", "deal"];
    const KINDS: [&str; 6] = [
        "creation",
        "deletion",
        "merge",
        "restore",
        "propertyChange",
        "associationChange",
    ];
    let (object, kind) = subscription_type
        .split_once('.')
        .unwrap_or((subscription_type, ""));
    let o = OBJECTS
        .iter()
        .position(|x| *x == object)
        .unwrap_or(OBJECTS.len());
    let k = KINDS.iter().position(|x| *x == kind).unwrap_or(KINDS.len());
    1_000_000 + (o * 10 + k) as u64
}

/// Builds webhook events with increasing event ids.
#[derive(Debug, Clone)]
pub struct EventFactory {
    pub portal_id: u64,
    pub app_id: u64,
    next_event_id: u64,
}

impl EventFactory {
    pub fn new(portal_id: u64) -> Self {
        Self {
            portal_id,
            app_id: 54321,
            next_event_id: 1,
        }
    }

    fn base(&mut self, object: &str, change: &str, object_id: u64, occurred_at: i64) -> Value {
        let id = self.next_event_id;
        self.next_event_id += 1;
        json!({
            "eventId": id,
            "subscriptionId": 12345,
            "portalId": self.portal_id,
            "appId": self.app_id,
            "occurredAt": occurred_at,
            "subscriptionType": format!("{object}.{change}"),
            "attemptNumber": 0,
            "objectId": object_id,
            "changeSource": "CRM",
        })
    }

    pub fn creation(&mut self, object: &str, object_id: u64, at: i64) -> Value {
        let mut e = self.base(object, "creation", object_id, at);
        e["changeFlag"] = json!("NEW");
        e
    }

    pub fn property_change(
        &mut self,
        object: &str,
        object_id: u64,
        at: i64,
        name: &str,
        value: &str,
    ) -> Value {
        let mut e = self.base(object, "propertyChange", object_id, at);
        e["propertyName"] = json!(name);
        e["propertyValue"] = json!(value);
        e
    }

    pub fn deletion(&mut self, object: &str, object_id: u64, at: i64) -> Value {
        let mut e = self.base(object, "deletion", object_id, at);
        e["changeFlag"] = json!("DELETED");
        e
    }

    pub fn restore(&mut self, object: &str, object_id: u64, at: i64) -> Value {
        self.base(object, "restore", object_id, at)
    }

    pub fn merge(
        &mut self,
        object: &str,
        primary: u64,
        merged: &[u64],
        new_id: u64,
        at: i64,
    ) -> Value {
        let mut e = self.base(object, "merge", new_id, at);
        e["primaryObjectId"] = json!(primary);
        e["mergedObjectIds"] = json!(merged);
        e["newObjectId"] = json!(new_id);
        e
    }
}

/// A small, realistic batch: three contacts created and filled in, one renamed, one
/// deleted.
pub fn sample_contacts_batch(portal_id: u64, now_ms: i64) -> Vec<Value> {
    let mut f = EventFactory::new(portal_id);
    let people = [
        (
            501,
            "ada@example.com",
            "Ada",
            "Lovelace",
            "+44 20 7946 0001",
        ),
        (
            502,
            "alan@example.com",
            "Alan",
            "Turing",
            "+44 20 7946 0002",
        ),
        (
            503,
            "grace@example.com",
            "Grace",
            "Hopper",
            "+1 202 555 0103",
        ),
    ];
    let mut batch = Vec::new();
    for (i, (id, email, first, last, phone)) in people.into_iter().enumerate() {
        let at = now_ms - 60_000 + i as i64 * 1000;
        batch.push(f.creation("contact", id, at));
        batch.push(f.property_change("contact", id, at + 1, "email", email));
        batch.push(f.property_change("contact", id, at + 1, "firstname", first));
        batch.push(f.property_change("contact", id, at + 1, "lastname", last));
        batch.push(f.property_change("contact", id, at + 1, "phone", phone));
    }
    batch.push(f.property_change("contact", 502, now_ms - 10_000, "jobtitle", "Mathematician"));
    batch.push(f.deletion("contact", 503, now_ms - 5_000));
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLISHED_SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const PUBLISHED_BODY: &[u8] = br#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn v1_signs_the_published_vector() {
        let headers = signed_headers(Signature::V1, PUBLISHED_SECRET, "", PUBLISHED_BODY, 0);
        assert_eq!(
            header(&headers, "X-HubSpot-Signature"),
            Some("232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de")
        );
        assert_eq!(header(&headers, "X-HubSpot-Signature-Version"), Some("v1"));
        let delivered = delivery_headers(
            Signature::V3,
            PUBLISHED_SECRET,
            "https://example.com/hooks",
            PUBLISHED_BODY,
            0,
        );
        assert_eq!(
            header(&delivered, "X-HubSpot-Signature"),
            Some("232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"),
            "deliveries carry v1 alongside v3"
        );
    }

    #[test]
    fn v2_signs_secret_method_uri_and_body() {
        let secret = "hubspot-sandbox-secret";
        let uri = "https://crm.example.com/crm/webhooks/hubspot?portal=62515&b=2";
        // sha256 over the concatenation as one string; the literal is from Python hashlib.
        let plain = format!(
            "{secret}POST{uri}{}",
            std::str::from_utf8(PUBLISHED_BODY).unwrap()
        );
        let expected = hex::encode(Sha256::digest(plain.as_bytes()));
        assert_eq!(
            expected,
            "bf90ae774acbb311af4d68d653a8957900f3bd62b76c934077aa82cd28e01fbb"
        );
        let headers = signed_headers(Signature::V2, secret, uri, PUBLISHED_BODY, 0);
        assert_eq!(
            header(&headers, "X-HubSpot-Signature"),
            Some(expected.as_str())
        );
        assert_eq!(header(&headers, "X-HubSpot-Signature-Version"), Some("v2"));
        let delivered = delivery_headers(Signature::V2, secret, uri, PUBLISHED_BODY, 1);
        assert_eq!(
            header(&delivered, "X-HubSpot-Signature"),
            Some(expected.as_str())
        );
        assert!(header(&delivered, "X-HubSpot-Signature-v3").is_some());
        assert_eq!(header(&delivered, "X-HubSpot-Request-Timestamp"), Some("1"));
    }

    #[test]
    fn subscription_ids_are_stable_per_type() {
        assert_eq!(
            subscription_id("contact.creation"),
            subscription_id("contact.creation")
        );
        let all: std::collections::BTreeSet<u64> = ["contact", "company", "deal"]
            .iter()
            .flat_map(|o| {
                [
                    "creation",
                    "deletion",
                    "merge",
                    "restore",
                    "propertyChange",
                    "associationChange",
                ]
                .map(|k| subscription_id(&format!("{o}.{k}")))
            })
            .collect();
        assert_eq!(all.len(), 18);
    }

    #[test]
    fn event_ids_increase_and_types_are_hubspots() {
        let batch = sample_contacts_batch(7, 1_700_000_000_000);
        assert_eq!(batch.len(), 17);
        assert_eq!(batch[0]["subscriptionType"], "contact.creation");
        assert!(batch
            .windows(2)
            .all(|w| w[0]["eventId"].as_u64() < w[1]["eventId"].as_u64()));
    }
}
