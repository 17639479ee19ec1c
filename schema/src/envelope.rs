//! The CloudEvents envelope of the events crmsync stores.
//!
//! A raw event keeps the provider's payload byte for byte as `data`, so a projection
//! can be re-derived from it later with other mappings. Its attributes:
//!
//! | attribute | value |
//! |---|---|
//! | `id` | unique per provider change (for HubSpot: event id, time and a digest) |
//! | `source` | `/crmsync/<provider>/<workspace>` (workspace escaped as a subject token) |
//! | `type` | `crmsync.<object>.<change>.v1`, e.g. `crmsync.contact.updated.v1` |
//! | `subject` | `<object>/<id>` (id escaped) |
//! | `time` | the provider's own time of the change |
//! | `datacontenttype` | `application/json` |

use chrono::{DateTime, Datelike, Utc};
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};

use crate::ids::{ObjectType, Provider, RemoteId, WorkspaceId};
use crate::subject::{dedupe_key, escape_token, Subjects};

/// What happened to a record. Past-tense facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    Created,
    Updated,
    Deleted,
    Restored,
    Merged,
    AssociationChanged,
    /// The whole record as the provider holds it now (hydrator, poller, backfill).
    Snapshot,
    /// The complete set of a record's links to one object type (association sweep).
    Links,
    /// Anything else the provider reported; stored, so nothing is lost.
    Other,
}

impl Change {
    /// The change an event type `crmsync.<object>.<change>.v1` names.
    pub fn of_type(event_type: &str) -> Option<Change> {
        let change = event_type.strip_prefix("crmsync.")?.split('.').nth(1)?;
        [
            Change::Created,
            Change::Updated,
            Change::Deleted,
            Change::Restored,
            Change::Merged,
            Change::AssociationChanged,
            Change::Snapshot,
            Change::Links,
            Change::Other,
        ]
        .into_iter()
        .find(|c| c.as_str() == change)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
            Change::Restored => "restored",
            Change::Merged => "merged",
            Change::AssociationChanged => "association_changed",
            Change::Snapshot => "snapshot",
            Change::Links => "links",
            Change::Other => "other",
        }
    }
}

/// One provider change on its way into the event stream.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub provider: Provider,
    pub workspace: WorkspaceId,
    pub object: ObjectType,
    pub id: RemoteId,
    pub change: Change,
    /// Unique per change; also the tie-break between changes at the same time.
    pub event_id: String,
    /// The provider's version of the change: what makes two copies of it collide.
    pub version: String,
    pub time: DateTime<Utc>,
    /// The provider's JSON for this change, verbatim.
    pub data: Vec<u8>,
}

impl RawEvent {
    pub fn event_type(&self) -> String {
        format!("crmsync.{}.{}.v1", self.object, self.change.as_str())
    }

    pub fn subject(&self, subjects: &Subjects) -> String {
        subjects.raw(self.provider, &self.workspace, &self.object, &self.id)
    }

    pub fn dedupe_key(&self) -> String {
        dedupe_key(
            self.provider,
            &self.workspace,
            &self.object,
            &self.id,
            &self.version,
        )
    }

    pub fn to_cloudevent(&self) -> Event {
        let mut event = EventBuilderV10::new()
            .id(self.event_id.clone())
            .source(format!(
                "/crmsync/{}/{}",
                self.provider,
                escape_token(self.workspace.as_str())
            ))
            .ty(self.event_type())
            .subject(format!(
                "{}/{}",
                self.object,
                escape_token(self.id.as_str())
            ))
            .time(self.time)
            .build()
            .expect("id, source and type are always set");
        event.set_data("application/json", self.data.clone());
        event
    }
}

/// Whether `t` can be an event's time: RFC 3339 (and so the CloudEvents `time`
/// attribute) writes years 0000 to 9999 only, so an event stamped later could be
/// stored but never read back.
pub fn representable(t: DateTime<Utc>) -> bool {
    (0..=9999).contains(&t.year())
}

/// The event's data as bytes, whatever form the SDK holds it in.
pub fn data_bytes(event: &Event) -> Vec<u8> {
    match event.data() {
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::String(s)) => s.clone().into_bytes(),
        Some(Data::Json(v)) => v.to_string().into_bytes(),
        None => Vec::new(),
    }
}

/// The source time of an event, falling back to the Unix epoch when absent.
pub fn event_time(event: &Event) -> DateTime<Utc> {
    event.time().copied().unwrap_or_default()
}
