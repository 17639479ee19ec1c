//! Snapshots: a HubSpot object as the API answers it, stored as a raw event so that
//! a hydrated webhook, a poll and a backfill of the same version collide in JetStream.

use chrono::{DateTime, Utc};

use crmsync_schema::{Change, ObjectType, Provider, RawEvent, RemoteId, WorkspaceId};

use super::client::HsObject;

/// The singular object type of an API type (`contacts` → `contact`).
pub fn object_of(api_type: &str) -> Option<ObjectType> {
    match api_type {
        "contacts" => Some(ObjectType::contact()),
        "companies" => Some(ObjectType::company()),
        "deals" => Some(ObjectType::deal()),
        _ => None,
    }
}

/// The API type of an object type (`contact` → `contacts`).
pub fn api_type_of(object: &str) -> Option<&'static str> {
    match object {
        "contact" => Some("contacts"),
        "company" => Some("companies"),
        "deal" => Some("deals"),
        _ => None,
    }
}

/// The properties crmsync asks for: the mapped ones, and the merge lineage.
pub fn properties_of(object: &str) -> Vec<&'static str> {
    let mut properties: Vec<&'static str> = super::mapping::fields_of(object)
        .map(|t| t.iter().map(|(hs, _)| *hs).collect())
        .unwrap_or_default();
    properties.push("hs_merged_object_ids");
    properties
}

/// When `object` last changed: an archived record when it was archived (its last edit
/// may be long before, and archiving does not move it), any other when it was last
/// modified.
pub fn changed_at(object: &HsObject) -> Option<DateTime<Utc>> {
    let archived = object
        .archived
        .then_some(object.archived_at.as_deref())
        .flatten();
    let modified = || {
        object
            .properties
            .get("hs_lastmodifieddate")
            .or_else(|| object.properties.get("lastmodifieddate"))
            .and_then(|v| v.as_str())
    };
    archived
        .or_else(modified)
        .or(object.updated_at.as_deref())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn time(object: &HsObject) -> DateTime<Utc> {
    changed_at(object).unwrap_or_default()
}

/// The raw event of a snapshot of `object` in `portal`.
pub fn snapshot_event(
    portal: &WorkspaceId,
    object: &ObjectType,
    record: &HsObject,
) -> Option<RawEvent> {
    let id = RemoteId::parse(record.id.clone()).ok()?;
    let at = time(record);
    let archived = if record.archived { "-a" } else { "" };
    let event_id = format!("hs-snap-{}-{}{archived}", record.id, at.timestamp_millis());
    Some(RawEvent {
        provider: Provider::HubSpot,
        workspace: portal.clone(),
        object: object.clone(),
        id,
        change: Change::Snapshot,
        version: event_id.clone(),
        event_id,
        time: at,
        data: serde_json::to_vec(record).ok()?,
    })
}

/// The complete set of `from`'s links to `to_object` records at `at`, as found by an
/// association sweep: links not in it are gone.
pub fn links_event(
    portal: &WorkspaceId,
    from_object: &ObjectType,
    from_id: &str,
    to_object: &str,
    to_ids: &[String],
    at: DateTime<Utc>,
) -> Option<RawEvent> {
    let id = RemoteId::parse(from_id.to_owned()).ok()?;
    let event_id = format!("hs-links-{from_id}-{to_object}-{}", at.timestamp_millis());
    let data = serde_json::json!({
        "fromType": from_object.as_str(),
        "fromId": from_id,
        "toType": to_object,
        "toIds": to_ids,
    });
    Some(RawEvent {
        provider: Provider::HubSpot,
        workspace: portal.clone(),
        object: from_object.clone(),
        id,
        change: Change::Links,
        version: event_id.clone(),
        event_id,
        time: at,
        data: serde_json::to_vec(&data).ok()?,
    })
}
