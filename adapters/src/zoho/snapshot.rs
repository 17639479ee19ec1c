//! Zoho records and deletions as raw events.
//!
//! Versions: a record's is its `Modified_Time` (Zoho shows it to the second) and a
//! digest of its content, so the hydrator's and the poller's copies of one state
//! collide in JetStream's dedupe window. Two states within one second share the
//! time; their event ids then order them by when crmsync read them (a later read
//! sees a state at least as new). A tombstone's event id sorts after a record's at
//! the same time: a record cannot change after its deletion within that second.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crmsync_schema::{Change, ObjectType, Provider, RawEvent, RemoteId, WorkspaceId};

use super::mapping::record_id;

fn time_of(value: Option<&Value>) -> Option<DateTime<Utc>> {
    value
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A record as read at `read_at`, as a snapshot event.
pub fn snapshot_event(
    org: &WorkspaceId,
    object: &ObjectType,
    record: &Value,
    read_at: DateTime<Utc>,
) -> Option<RawEvent> {
    let id = record_id(record)?;
    let modified = time_of(record.get("Modified_Time")).unwrap_or(DateTime::UNIX_EPOCH);
    let data = serde_json::to_vec(record).ok()?;
    let digest = hex::encode(&Sha256::digest(&data)[..8]);
    let ms = modified.timestamp_millis();
    Some(RawEvent {
        provider: Provider::Zoho,
        workspace: org.clone(),
        object: object.clone(),
        id: RemoteId::parse(id.clone()).ok()?,
        change: Change::Snapshot,
        event_id: format!(
            "zoho-record-{id}-{ms:013}-{:013}-{digest}",
            read_at.timestamp_millis().max(0)
        ),
        version: format!("{ms}-{digest}"),
        time: modified,
        data,
    })
}

/// A row of the deleted-records API as a tombstone event.
pub fn deleted_event(org: &WorkspaceId, object: &ObjectType, row: &Value) -> Option<RawEvent> {
    let id = record_id(row)?;
    let at = time_of(row.get("deleted_time")).unwrap_or(DateTime::UNIX_EPOCH);
    let ms = at.timestamp_millis();
    Some(RawEvent {
        provider: Provider::Zoho,
        workspace: org.clone(),
        object: object.clone(),
        id: RemoteId::parse(id.clone()).ok()?,
        change: Change::Deleted,
        event_id: format!("zoho-tombstone-{id}-{ms:013}"),
        version: format!("deleted-{ms}"),
        time: at,
        data: serde_json::to_vec(row).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmsync_schema::Version;
    use serde_json::json;

    #[test]
    fn copies_of_one_state_collide_and_later_reads_win_ties() {
        let org = WorkspaceId::parse("7001").unwrap();
        let object = ObjectType::parse("contact").unwrap();
        let record = json!({"id": "42", "Email": "a@example.com", "Modified_Time": "2024-05-01T10:00:00+05:30"});
        let early = DateTime::from_timestamp(1_714_540_000, 0).unwrap();
        let late = DateTime::from_timestamp(1_714_540_001, 0).unwrap();
        let a = snapshot_event(&org, &object, &record, early).unwrap();
        let b = snapshot_event(&org, &object, &record, late).unwrap();
        assert_eq!(a.dedupe_key(), b.dedupe_key());
        assert_eq!(a.time.timestamp(), 1_714_537_800);
        let mut edited = record.clone();
        edited["Email"] = json!("b@example.com");
        let c = snapshot_event(&org, &object, &edited, late).unwrap();
        assert_ne!(a.dedupe_key(), c.dedupe_key());
        assert!(Version::new(c.time, &c.event_id) > Version::new(a.time, &a.event_id));
        let gone = deleted_event(
            &org,
            &object,
            &json!({"id": "42", "deleted_time": "2024-05-01T10:00:00+05:30"}),
        )
        .unwrap();
        assert_eq!(gone.change, Change::Deleted);
        assert!(Version::new(gone.time, &gone.event_id) > Version::new(c.time, &c.event_id));
        assert!(snapshot_event(&org, &object, &json!({"Email": "x"}), late).is_none());
    }
}
