//! Zoho notification callbacks: `{server_time, module, resource_uri, ids, operation,
//! channel_id, token, affected_fields, query_params}`. Zoho neither signs nor retries
//! them; the channel's secret `token`, echoed back, is the only proof of origin, so
//! it is checked by the receiver and never stored. Each id becomes its own raw event
//! (per-record subjects keep per-record order) holding the callback's JSON narrowed to
//! that id.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crmsync_schema::{Change, ObjectType, Provider, RawEvent, RemoteId, WorkspaceId};

use crate::Secret;

/// A callback, parsed just enough to route it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub channel_id: String,
    /// The echoed channel token (compare in constant time; never log or store it).
    pub token: Option<Secret<String>>,
    pub module: String,
    pub operation: String,
    pub ids: Vec<String>,
    pub server_time: DateTime<Utc>,
    /// Whether Zoho stated `server_time` (else it is the time of receipt).
    stamped: bool,
    body: Map<String, Value>,
}

/// Why a callback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("the notification has no {0}")]
    Missing(&'static str),
    #[error("the notification's {0} is not valid")]
    Invalid(&'static str),
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Notification {
    pub fn parse(body: &[u8]) -> Result<Self, NotificationError> {
        let mut body: Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| NotificationError::NotJson(e.to_string()))?;
        // Taken out at once, so that nothing made from the body can carry it.
        let token = match body.remove("token") {
            Some(Value::String(t)) => Some(Secret::new(t)),
            _ => None,
        };
        let channel_id = body
            .get("channel_id")
            .ok_or(NotificationError::Missing("channel_id"))
            .and_then(|v| text(v).ok_or(NotificationError::Invalid("channel_id")))?;
        let module = body
            .get("module")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .ok_or(NotificationError::Invalid("module"))?
            .to_owned();
        let operation = body
            .get("operation")
            .and_then(Value::as_str)
            .ok_or(NotificationError::Missing("operation"))?
            .to_owned();
        let ids: Vec<String> = match body.get("ids") {
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|v| text(v).ok_or(NotificationError::Invalid("ids")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(NotificationError::Invalid("ids")),
            None => return Err(NotificationError::Missing("ids")),
        };
        // A time Zoho stated (a null or other non-time is as good as none).
        let stamped = matches!(
            body.get("server_time"),
            Some(Value::Number(_) | Value::String(_))
        );
        let server_time = match body.get("server_time") {
            Some(Value::Number(n)) => n
                .as_i64()
                .and_then(DateTime::from_timestamp_millis)
                .ok_or(NotificationError::Invalid("server_time"))?,
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| NotificationError::Invalid("server_time"))?,
            _ => Utc::now(),
        };
        if !crmsync_schema::envelope::representable(server_time) {
            return Err(NotificationError::Invalid("server_time"));
        }
        Ok(Self {
            channel_id,
            token,
            module,
            operation,
            ids,
            server_time,
            stamped,
            body,
        })
    }

    /// What the operation did to each record.
    pub fn change(&self) -> Change {
        match self.operation.as_str() {
            "insert" | "create" => Change::Created,
            "update" | "edit" => Change::Updated,
            "delete" => Change::Deleted,
            _ => Change::Other,
        }
    }

    /// The object type records of this module are stored as.
    pub fn object(&self) -> Result<ObjectType, NotificationError> {
        let name = super::object_of(&self.module)
            .map(str::to_owned)
            .unwrap_or_else(|| self.module.to_ascii_lowercase());
        ObjectType::parse(name).map_err(|_| NotificationError::Invalid("module"))
    }

    /// One raw event per record, without the token.
    pub fn events(&self, org: &WorkspaceId) -> Result<Vec<RawEvent>, NotificationError> {
        let object = self.object()?;
        // What makes two deliveries of one callback collide: Zoho's time, or without
        // it a digest of the callback (never the time of receipt, which would store
        // a replayed callback again).
        let stamp = if self.stamped {
            self.server_time.timestamp_millis().to_string()
        } else {
            use sha2::Digest as _;
            let bytes = serde_json::to_vec(&self.body).expect("a JSON object serialises");
            format!("d{}", hex::encode(&sha2::Sha256::digest(bytes)[..8]))
        };
        let mut events = Vec::with_capacity(self.ids.len());
        for id in &self.ids {
            let mut body = self.body.clone();
            body.insert("ids".into(), Value::Array(vec![Value::String(id.clone())]));
            if let Some(Value::Array(affected)) = body.get_mut("affected_fields") {
                affected.retain(|a| a.get(id).is_some());
            }
            if let Some(Value::Array(values)) = body.get_mut("affected_values") {
                values.retain(|a| a.get("record_id").and_then(text).as_deref() == Some(id));
            }
            let version = format!("notify-{}-{stamp}-{}", self.channel_id, self.operation);
            events.push(RawEvent {
                provider: Provider::Zoho,
                workspace: org.clone(),
                object: object.clone(),
                id: RemoteId::parse(id.clone()).map_err(|_| NotificationError::Invalid("ids"))?,
                change: self.change(),
                event_id: format!("zoho-{version}-{id}"),
                version,
                time: self.server_time,
                data: serde_json::to_vec(&body).expect("a JSON object serialises"),
            });
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_callback_without_server_time_is_deduplicated_by_its_contents() {
        let org = WorkspaceId::parse("org").unwrap();
        let mut body = callback();
        body.as_object_mut().unwrap().remove("server_time");
        let mut null = body.clone();
        null["server_time"] = Value::Null;
        let version = |b: &Value| {
            let n = Notification::parse(&serde_json::to_vec(b).unwrap()).unwrap();
            n.events(&org).unwrap()[0].dedupe_key()
        };
        assert_eq!(version(&body), version(&body), "a replay collides");
        assert_eq!(
            version(&null),
            version(&null),
            "so does one with a null time"
        );
        let mut other = body.clone();
        other["operation"] = json!("delete");
        assert_ne!(version(&body), version(&other));
        other = body.clone();
        other["affected_fields"] = json!([{"1": ["Email"]}]);
        assert_ne!(version(&body), version(&other), "another change does not");
    }

    fn callback() -> Value {
        json!({
            "server_time": 1_714_540_000_123_i64,
            "query_params": {},
            "module": "Contacts",
            "resource_uri": "https://www.zohoapis.com/crm/v8/Contacts",
            "ids": ["1", "2"],
            "affected_fields": [{"1": ["Email"]}, {"2": ["Phone"]}],
            "operation": "update",
            "channel_id": 1_000_000_068_001_i64,
            "token": "secret-token",
        })
    }

    #[test]
    fn a_callback_becomes_one_event_per_record_without_its_token() {
        let n = Notification::parse(callback().to_string().as_bytes()).unwrap();
        assert_eq!(n.channel_id, "1000000068001");
        assert_eq!(
            n.token.as_ref().map(|t| t.expose().as_str()),
            Some("secret-token")
        );
        assert!(!format!("{n:?}").contains("secret-token"));
        let events = n.events(&WorkspaceId::parse("7001").unwrap()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].change, Change::Updated);
        assert_eq!(events[0].object.as_str(), "contact");
        let data: Value = serde_json::from_slice(&events[1].data).unwrap();
        assert_eq!(data["ids"], json!(["2"]));
        assert_eq!(data["affected_fields"], json!([{"2": ["Phone"]}]));
        assert!(data.get("token").is_none());
        assert_ne!(events[0].dedupe_key(), events[1].dedupe_key());
    }

    #[test]
    fn broken_callbacks_are_refused() {
        for (field, value) in [
            ("channel_id", json!(null)),
            ("ids", json!("1")),
            ("ids", json!([{"x": 1}])),
            ("module", json!("Contacts.x")),
            ("server_time", json!("yesterday")),
        ] {
            let mut c = callback();
            c[field] = value;
            assert!(
                Notification::parse(c.to_string().as_bytes()).is_err(),
                "{field}"
            );
        }
        assert!(Notification::parse(b"[1]").is_err());
        let mut deleted = callback();
        deleted["operation"] = json!("delete");
        deleted["module"] = json!("Calls");
        let n = Notification::parse(deleted.to_string().as_bytes()).unwrap();
        assert_eq!(n.change(), Change::Deleted);
        assert_eq!(n.object().unwrap().as_str(), "activity");
    }
}
