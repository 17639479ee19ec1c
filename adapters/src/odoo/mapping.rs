//! Odoo records onto the canonical model, and as raw events.
//!
//! `res.partner` is a company when `is_company`, else a contact; `crm.lead` is a deal;
//! `mail.activity` an activity (kept raw until activities are projected). Many2one
//! values (`[id, "name"]` or `false`) land as the id, with the name beside it where
//! canonical (`company_name`, `stage`); `false` is null; Odoo's one `name` of a person
//! is also split into `first_name` and `last_name` at its last space. Links: contact →
//! company (`parent_id`), deal → contact (`partner_id`).
//!
//! Versions: `write_date` is shown to the second and bumped by no-op writes, so a
//! record's dedupe version is its `write_date` and a digest of its content — re-reads
//! in the overlap window and no-op writes store nothing new — and states sharing a
//! second are ordered by when crmsync read them. A tombstone (an id gone from the
//! model) is dated when it was found missing, and never before the newest state the
//! projection holds (clocks differ).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crmsync_schema::fields::DELETED;
use crmsync_schema::mapping::split_name;
use crmsync_schema::subject::escape_token;
use crmsync_schema::{
    Change, FieldSet, ObjectType, Provider, RawEvent, RemoteId, Version, WorkspaceId,
};

use crate::{MappingError, Retraction, RowChange};

fn malformed(reason: impl Into<String>) -> MappingError {
    MappingError::Malformed {
        provider: "odoo",
        reason: reason.into(),
    }
}

/// The object type a record of `model` is stored as.
pub fn object_of(model: &str, record: &Value) -> Option<&'static str> {
    match model {
        "res.partner" => Some(if record.get("is_company") == Some(&Value::Bool(true)) {
            "company"
        } else {
            "contact"
        }),
        "crm.lead" => Some("deal"),
        "mail.activity" => Some("activity"),
        _ => None,
    }
}

/// Odoo's `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn parse_odoo_time(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// A record's `write_date`.
pub fn write_date(record: &Value) -> Option<DateTime<Utc>> {
    record
        .get("write_date")
        .and_then(Value::as_str)
        .and_then(parse_odoo_time)
}

fn id_of(record: &Value) -> Option<i64> {
    record.get("id").and_then(Value::as_i64)
}

/// A record read at `read_at`, as a snapshot event.
pub fn snapshot_event(
    account: &WorkspaceId,
    model: &str,
    record: &Value,
    read_at: DateTime<Utc>,
) -> Option<RawEvent> {
    let id = id_of(record)?;
    let object = ObjectType::parse(object_of(model, record)?).ok()?;
    let at = write_date(record).unwrap_or(DateTime::UNIX_EPOCH);
    let data = serde_json::to_vec(record).ok()?;
    let digest = hex::encode(&Sha256::digest(&data)[..8]);
    let ms = at.timestamp_millis();
    Some(RawEvent {
        provider: Provider::Odoo,
        workspace: account.clone(),
        object,
        id: RemoteId::parse(id.to_string()).ok()?,
        change: Change::Snapshot,
        event_id: format!(
            "odoo-record-{id}-{ms:013}-{:013}-{digest}",
            read_at.timestamp_millis().max(0)
        ),
        version: format!("{ms}-{digest}"),
        time: at,
        data,
    })
}

/// A record found gone at `found_at` (its id no longer in the model), as a tombstone.
pub fn deleted_event(
    account: &WorkspaceId,
    object: &ObjectType,
    id: &str,
    found_at: DateTime<Utc>,
) -> Option<RawEvent> {
    let ms = found_at.timestamp_millis();
    Some(RawEvent {
        provider: Provider::Odoo,
        workspace: account.clone(),
        object: object.clone(),
        id: RemoteId::parse(id.to_owned()).ok()?,
        change: Change::Deleted,
        event_id: format!("odoo-tombstone-{id}-{ms:013}"),
        version: format!("deleted-{ms}"),
        time: found_at,
        data: serde_json::to_vec(&serde_json::json!({"id": id, "found_missing_at": found_at}))
            .ok()?,
    })
}

fn many2one(v: &Value) -> Option<(Value, Value)> {
    match v.as_array()?.as_slice() {
        [id, name] => Some((id.clone(), name.clone())),
        _ => None,
    }
}

fn plain(v: &Value) -> Value {
    match v {
        Value::Bool(false) => Value::Null,
        Value::String(s) if s.is_empty() => Value::Null,
        other => other.clone(),
    }
}

/// Canonical name and, for many2one fields, where the linked name goes.
fn target(object: &str, field: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match (object, field) {
        (_, "email") | ("deal", "email_from") => ("email", None),
        (_, "phone") => ("phone", None),
        (_, "city") => ("city", None),
        (_, "website") => ("website", None),
        ("contact", "function") => ("job_title", None),
        ("contact", "parent_id") => ("company_id", Some("company_name")),
        ("deal", "name") | ("company", "name") => ("name", None),
        ("deal", "expected_revenue") => ("amount", None),
        ("deal", "stage_id") => ("stage_id", Some("stage")),
        ("deal", "date_deadline") => ("close_date", None),
        ("deal", "user_id") | ("contact", "user_id") | ("company", "user_id") => ("owner_id", None),
        ("deal", "partner_id") => ("contact_id", Some("contact_name")),
        _ => return None,
    })
}

/// The model an object type is read from.
fn model_of(object: &str) -> &'static str {
    match object {
        "deal" => "crm.lead",
        "activity" => "mail.activity",
        _ => "res.partner",
    }
}

/// Where each mapped field of `object` lands by default: `(Odoo field, field)`; a
/// many2one lands as its id and, where canonical, its name; a contact's `name` also
/// as `first_name` and `last_name`.
pub fn default_targets(object: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for field in super::fields_of(model_of(object)) {
        match target(object, field) {
            Some((canonical, label)) => {
                out.push(((*field).to_owned(), canonical.to_owned()));
                out.extend(label.map(|l| ((*field).to_owned(), l.to_owned())));
            }
            None if object == "contact" && *field == "name" => {
                for c in ["name", "first_name", "last_name"] {
                    out.push(("name".to_owned(), c.to_owned()));
                }
            }
            None => {}
        }
    }
    out
}

/// The field an Odoo field of `object` lands as by default (a many2one: its id).
pub fn landing(object: &str, field: &str) -> String {
    target(object, field).map_or_else(|| field.to_owned(), |(c, _)| c.to_owned())
}

/// Normalises a snapshot of an `object` record.
pub fn snapshot_changes(
    object: &str,
    data: &[u8],
    version: &Version,
) -> Result<Vec<RowChange>, MappingError> {
    if !matches!(object, "contact" | "company" | "deal") {
        return Err(malformed(format!("no mapping for {object}")));
    }
    let record: Map<String, Value> =
        serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let id = record
        .get("id")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("a record without an id"))?;
    let mut fields = FieldSet::default();
    fields.set(DELETED, Value::Bool(false), version);
    for (name, value) in &record {
        if matches!(
            name.as_str(),
            "id" | "write_date" | "create_date" | "is_company"
        ) {
            continue;
        }
        match target(object, name) {
            Some((canonical, Some(label))) => {
                let (id, text) = many2one(value).unwrap_or((Value::Null, Value::Null));
                fields.set(canonical, id, version);
                fields.set(label, plain(&text), version);
            }
            Some((canonical, None)) => {
                let value = many2one(value).map_or_else(|| plain(value), |(id, _)| id);
                fields.set(canonical, value, version);
            }
            // A boolean, not Odoo's `false` for "empty": an archived record (a lost
            // lead) says so.
            None if name == "active" => {
                let active = value.as_bool().map_or_else(|| plain(value), Value::Bool);
                fields.set("active", active, version);
            }
            None if object == "contact" && name == "name" => {
                let full = plain(value);
                let (first, last) = split_name(&full);
                fields.set("name", full, version);
                fields.set("first_name", first, version);
                fields.set("last_name", last, version);
            }
            None => {
                let value = many2one(value).map_or_else(|| plain(value), |(id, _)| id);
                fields.set(name, value, version);
            }
        }
    }
    Ok(vec![RowChange {
        remote_id: RemoteId::parse(id.to_string()).map_err(|e| malformed(e.to_string()))?,
        fields,
    }])
}

/// The links a snapshot states (each single-valued; the retraction removes others).
pub fn snapshot_links(
    object: &str,
    data: &[u8],
    version: &Version,
) -> Result<(Vec<RowChange>, Vec<Retraction>), MappingError> {
    let (field, to) = match object {
        "contact" => ("parent_id", "company"),
        "deal" => ("partner_id", "contact"),
        _ => return Ok((Vec::new(), Vec::new())),
    };
    let record: Map<String, Value> =
        serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let Some(value) = record.get(field) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let from = record
        .get("id")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("a record without an id"))?
        .to_string();
    let linked = many2one(value)
        .and_then(|(id, _)| id.as_i64())
        .map(|i| i.to_string());
    let mut rows = Vec::new();
    if let Some(to_id) = &linked {
        let link = [object, from.as_str(), to, to_id.as_str()]
            .iter()
            .map(|p| escape_token(p))
            .collect::<Vec<_>>()
            .join("|");
        let mut fields = FieldSet::default();
        fields.set("$removed", Value::Bool(false), version);
        rows.push(RowChange {
            remote_id: RemoteId::parse(link).map_err(|e| malformed(e.to_string()))?,
            fields,
        });
    }
    let retraction = Retraction {
        from_type: escape_token(object),
        from_id: escape_token(&from),
        to_type: escape_token(to),
        keep: linked.iter().map(|t| escape_token(t)).collect(),
        version: version.clone(),
    };
    Ok((rows, vec![retraction]))
}

/// Normalises a tombstone.
pub fn deleted_changes(data: &[u8], version: &Version) -> Result<Vec<RowChange>, MappingError> {
    let value: Value = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let id = match value.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(malformed("a tombstone without an id")),
    };
    let mut fields = FieldSet::default();
    fields.set(DELETED, Value::Bool(true), version);
    Ok(vec![RowChange {
        remote_id: RemoteId::parse(id).map_err(|e| malformed(e.to_string()))?,
        fields,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn version() -> Version {
        Version::new(Utc.timestamp_millis_opt(1000).unwrap(), "e1")
    }

    #[test]
    fn partners_and_leads_land_on_canonical_fields() {
        let person = json!({"id": 7, "name": "Ada King Lovelace", "is_company": false,
            "parent_id": [3, "Analytical Engines"], "function": "Countess", "email": false,
            "phone": "+44 1", "active": true, "write_date": "2024-05-01 10:00:00"});
        assert_eq!(object_of("res.partner", &person), Some("contact"));
        let c = snapshot_changes("contact", person.to_string().as_bytes(), &version()).unwrap();
        let f = &c[0].fields.fields;
        assert_eq!(c[0].remote_id.as_str(), "7");
        assert_eq!(f["first_name"], json!("Ada King"));
        assert_eq!(f["last_name"], json!("Lovelace"));
        assert_eq!(f["company_id"], json!(3));
        assert_eq!(f["company_name"], json!("Analytical Engines"));
        assert_eq!(f["job_title"], json!("Countess"));
        assert_eq!(f["email"], Value::Null);
        assert_eq!(f["active"], json!(true));
        assert!(!f.contains_key("write_date"));
        let lead = json!({"id": 9, "name": "Renewal", "stage_id": [2, "Qualified"],
            "expected_revenue": 1200.5, "partner_id": false, "user_id": [2, "Mitchell"],
            "date_deadline": "2024-06-01", "active": false});
        let d = snapshot_changes("deal", lead.to_string().as_bytes(), &version()).unwrap();
        let f = &d[0].fields.fields;
        assert_eq!(
            f["active"],
            json!(false),
            "a lost lead is archived, not blank"
        );
        assert_eq!(
            f["contact_id"],
            Value::Null,
            "Odoo's false is blank elsewhere"
        );
        assert_eq!(f["stage"], json!("Qualified"));
        assert_eq!(f["amount"], json!(1200.5));
        assert_eq!(f["owner_id"], json!(2));
        assert_eq!(f["close_date"], json!("2024-06-01"));
        let (rows, retractions) =
            snapshot_links("deal", lead.to_string().as_bytes(), &version()).unwrap();
        assert!(rows.is_empty());
        assert!(retractions[0].keep.is_empty());
        let (rows, _) =
            snapshot_links("contact", person.to_string().as_bytes(), &version()).unwrap();
        assert_eq!(rows[0].remote_id.as_str(), "contact|7|company|3");
    }

    #[test]
    fn versions_collide_for_one_state_and_tombstones_are_found() {
        let account = WorkspaceId::parse("crmsync@odoo").unwrap();
        let r =
            json!({"id": 7, "name": "A", "is_company": true, "write_date": "2024-05-01 10:00:00"});
        let t0 = Utc.timestamp_opt(1_714_557_600, 0).unwrap();
        let a = snapshot_event(&account, "res.partner", &r, t0).unwrap();
        let b = snapshot_event(
            &account,
            "res.partner",
            &r,
            t0 + chrono::Duration::seconds(5),
        )
        .unwrap();
        assert_eq!(a.object.as_str(), "company");
        assert_eq!(a.dedupe_key(), b.dedupe_key());
        assert_eq!(a.time, parse_odoo_time("2024-05-01 10:00:00").unwrap());
        let gone = deleted_event(&account, &a.object, "7", t0).unwrap();
        let rows = deleted_changes(&gone.data, &version()).unwrap();
        assert!(rows[0].fields.is_deleted());
        assert!(snapshot_changes("activity", b"{}", &version()).is_err());
    }
}
