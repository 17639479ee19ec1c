//! HubSpot payloads onto the canonical model.

use serde_json::Value;

use crmsync_schema::fields::{DELETED, MERGED_INTO};
use crmsync_schema::{Change, FieldSet, RemoteId, Version};

use super::webhook::WebhookEvent;
use crate::{MappingError, RowChange};

/// HubSpot contact properties with a canonical name; other properties keep theirs.
pub const CONTACT_FIELDS: &[(&str, &str)] = &[
    ("email", "email"),
    ("firstname", "first_name"),
    ("lastname", "last_name"),
    ("phone", "phone"),
    ("mobilephone", "mobile_phone"),
    ("jobtitle", "job_title"),
    ("company", "company_name"),
    ("lifecyclestage", "lifecycle_stage"),
    ("hubspot_owner_id", "owner_id"),
];

/// HubSpot company properties with a canonical name.
pub const COMPANY_FIELDS: &[(&str, &str)] = &[
    ("name", "name"),
    ("domain", "domain"),
    ("phone", "phone"),
    ("city", "city"),
    ("country", "country"),
    ("industry", "industry"),
    ("hubspot_owner_id", "owner_id"),
];

/// HubSpot deal properties with a canonical name.
pub const DEAL_FIELDS: &[(&str, &str)] = &[
    ("dealname", "name"),
    ("amount", "amount"),
    ("dealstage", "stage"),
    ("pipeline", "pipeline"),
    ("closedate", "close_date"),
    ("hubspot_owner_id", "owner_id"),
];

/// The mapping table of an object type, if crmsync projects it.
pub fn fields_of(object: &str) -> Option<&'static [(&'static str, &'static str)]> {
    match object {
        "contact" => Some(CONTACT_FIELDS),
        "company" => Some(COMPANY_FIELDS),
        "deal" => Some(DEAL_FIELDS),
        _ => None,
    }
}

/// The canonical name of a HubSpot property in `table`. An unmapped property keeps
/// its name, unless that name is a canonical field's: then it becomes
/// `hubspot.<name>`, so a custom property called `phone` cannot overwrite the mapped
/// phone.
pub fn canonical_field<'a>(
    table: &[(&str, &'static str)],
    property: &'a str,
) -> std::borrow::Cow<'a, str> {
    if let Some((_, canonical)) = table.iter().find(|(hs, _)| *hs == property) {
        return (*canonical).into();
    }
    if table.iter().any(|(_, canonical)| *canonical == property) {
        return format!("hubspot.{property}").into();
    }
    property.into()
}

/// Where each mapped property of `object` lands by default: `(property, field)`.
pub fn default_targets(object: &str) -> Vec<(String, String)> {
    fields_of(object)
        .unwrap_or_default()
        .iter()
        .map(|(hs, canonical)| ((*hs).to_owned(), (*canonical).to_owned()))
        .collect()
}

/// The field a property of `object` lands as by default.
pub fn landing(object: &str, property: &str) -> String {
    canonical_field(fields_of(object).unwrap_or_default(), property).into_owned()
}

/// The canonical name of a HubSpot contact property.
pub fn contact_field(property: &str) -> std::borrow::Cow<'_, str> {
    canonical_field(CONTACT_FIELDS, property)
}

fn malformed(reason: impl Into<String>) -> MappingError {
    MappingError::Malformed {
        provider: "hubspot",
        reason: reason.into(),
    }
}

fn remote_id(id: &str) -> Result<RemoteId, MappingError> {
    RemoteId::parse(id).map_err(|e| malformed(e.to_string()))
}

fn one(id: RemoteId, field: &str, value: Value, version: &Version) -> RowChange {
    let mut fields = FieldSet::default();
    fields.set(field, value, version);
    RowChange {
        remote_id: id,
        fields,
    }
}

/// Normalises one raw HubSpot webhook event about `object` (`contact`, `company`,
/// `deal`: the CloudEvent's data) into the row changes it implies. Association
/// changes carry nothing for the object's own table.
pub fn changes(
    object: &str,
    data: &[u8],
    version: &Version,
) -> Result<Vec<RowChange>, MappingError> {
    let table = fields_of(object).ok_or_else(|| malformed(format!("no mapping for {object}")))?;
    changes_with(table, data, version)
}

/// Normalises a HubSpot association change (`CONTACT_TO_COMPANY`, …) into the link
/// row it adds or removes; other events carry no link.
pub fn association_changes(data: &[u8], version: &Version) -> Result<Vec<RowChange>, MappingError> {
    let event: WebhookEvent = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    if event.change() != Change::AssociationChanged {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let kind = value
        .get("associationType")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("associationChange without associationType"))?;
    let (from, to) = kind
        .split_once("_TO_")
        .ok_or_else(|| malformed(format!("associationType {kind:?} is not FROM_TO_TO")))?;
    let id_of = |name: &str| match value.get(name) {
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(malformed(format!("associationChange without {name}"))),
    };
    let link = [
        from.to_ascii_lowercase(),
        id_of("fromObjectId")?,
        to.to_ascii_lowercase(),
        id_of("toObjectId")?,
    ]
    .iter()
    .map(|p| crmsync_schema::subject::escape_token(p))
    .collect::<Vec<_>>()
    .join("|");
    let removed = value
        .get("associationRemoved")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(vec![one(
        remote_id(&link)?,
        "$removed",
        Value::Bool(removed),
        version,
    )])
}

/// Normalises a link set: every listed link is present as of the set's version, and
/// the retraction marks the others removed.
pub fn links_changes(
    data: &[u8],
    version: &Version,
) -> Result<(Vec<RowChange>, crate::Retraction), MappingError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Links {
        from_type: String,
        from_id: String,
        to_type: String,
        to_ids: Vec<String>,
    }
    let links: Links = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let esc = crmsync_schema::subject::escape_token;
    let mut rows = Vec::with_capacity(links.to_ids.len());
    for to in &links.to_ids {
        let link = [&links.from_type, &links.from_id, &links.to_type, to]
            .iter()
            .map(|p| esc(p))
            .collect::<Vec<_>>()
            .join("|");
        rows.push(one(
            remote_id(&link)?,
            "$removed",
            Value::Bool(false),
            version,
        ));
    }
    let retraction = crate::Retraction {
        from_type: esc(&links.from_type),
        from_id: esc(&links.from_id),
        to_type: esc(&links.to_type),
        keep: links.to_ids.iter().map(|t| esc(t)).collect(),
        version: version.clone(),
    };
    Ok((rows, retraction))
}

/// Normalises a snapshot (the HubSpot object JSON, as the API answers it): every
/// property it carries is set at the snapshot's version, and `archived` is the
/// tombstone.
pub fn snapshot_changes(
    object: &str,
    data: &[u8],
    version: &Version,
) -> Result<Vec<RowChange>, MappingError> {
    let table = fields_of(object).ok_or_else(|| malformed(format!("no mapping for {object}")))?;
    let snapshot: super::client::HsObject =
        serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let id = remote_id(&snapshot.id)?;
    let mut fields = FieldSet::default();
    fields.set(DELETED, Value::Bool(snapshot.archived), version);
    for (property, value) in &snapshot.properties {
        if matches!(
            property.as_str(),
            "hs_object_id"
                | "createdate"
                | "lastmodifieddate"
                | "hs_lastmodifieddate"
                | "hs_merged_object_ids"
        ) {
            continue;
        }
        let value = match value {
            Value::String(s) if s.is_empty() => Value::Null,
            other => other.clone(),
        };
        fields.set(&canonical_field(table, property), value, version);
    }
    let mut changes = Vec::new();
    // Ids merged into this record point at it, even when the merge webhook was lost.
    if let Some(Value::String(merged)) = snapshot.properties.get("hs_merged_object_ids") {
        for old in merged
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != snapshot.id)
        {
            let into = Value::String(snapshot.id.clone());
            changes.push(one(remote_id(old)?, MERGED_INTO, into, version));
        }
    }
    changes.insert(
        0,
        RowChange {
            remote_id: id,
            fields,
        },
    );
    Ok(changes)
}

/// [`changes`] for contacts.
pub fn contact_changes(data: &[u8], version: &Version) -> Result<Vec<RowChange>, MappingError> {
    changes_with(CONTACT_FIELDS, data, version)
}

fn changes_with(
    table: &[(&str, &'static str)],
    data: &[u8],
    version: &Version,
) -> Result<Vec<RowChange>, MappingError> {
    let event: WebhookEvent = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let id = remote_id(&event.record_id().map(|i| i.0.clone()).unwrap_or_default())?;
    Ok(match event.change() {
        Change::Created | Change::Restored => vec![one(id, DELETED, Value::Bool(false), version)],
        Change::Deleted => vec![one(id, DELETED, Value::Bool(true), version)],
        Change::Updated => {
            let property = event
                .property_name
                .as_deref()
                .filter(|p| !p.is_empty() && !p.starts_with('$'))
                .ok_or_else(|| malformed("propertyChange without a valid propertyName"))?;
            let value = match event.property_value {
                None => Value::Null,
                Some(Value::String(s)) if s.is_empty() => Value::Null,
                Some(v) => v,
            };
            vec![one(id, &canonical_field(table, property), value, version)]
        }
        Change::Merged => {
            let (survivor, losers) = merge_parties(&event, &id)?;
            let mut changes = vec![one(survivor.clone(), DELETED, Value::Bool(false), version)];
            for loser in losers {
                let into = Value::String(survivor.as_str().to_owned());
                changes.push(one(loser, MERGED_INTO, into, version));
            }
            changes
        }
        Change::AssociationChanged | Change::Snapshot | Change::Links | Change::Other => Vec::new(),
    })
}

/// A merge's survivor, and the records merged into it (each once, never the
/// survivor). `id` is the event's record.
fn merge_parties(
    event: &WebhookEvent,
    id: &RemoteId,
) -> Result<(RemoteId, Vec<RemoteId>), MappingError> {
    let survivor = event
        .new_object_id
        .as_ref()
        .or(event.primary_object_id.as_ref())
        .map_or(Ok(id.clone()), |s| remote_id(&s.0))?;
    let mut losers: Vec<RemoteId> = Vec::new();
    let named = event
        .merged_object_ids
        .iter()
        .chain(event.primary_object_id.iter())
        .chain(event.record_id());
    for loser in named {
        let loser = remote_id(&loser.0)?;
        if loser != survivor && !losers.contains(&loser) {
            losers.push(loser);
        }
    }
    Ok((survivor, losers))
}

/// The links a merge ends: every link naming a record merged away, on either side.
/// HubSpot moves them to the survivor and announces the survivor's own links (as
/// `associationChange`s, or found by the link sweep); the loser's would otherwise
/// stay in the projection for ever, as no later event names the loser.
pub fn merge_unlinks(
    object: &str,
    data: &[u8],
    version: &Version,
) -> Result<Vec<crate::Unlink>, MappingError> {
    let event: WebhookEvent = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    if event.change() != Change::Merged {
        return Ok(Vec::new());
    }
    let id = remote_id(&event.record_id().map(|i| i.0.clone()).unwrap_or_default())?;
    let (_, losers) = merge_parties(&event, &id)?;
    let esc = crmsync_schema::subject::escape_token;
    Ok(losers
        .into_iter()
        .map(|loser| crate::Unlink {
            object_type: esc(object),
            id: esc(loser.as_str()),
            version: version.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn version() -> Version {
        Version::new(Utc.timestamp_millis_opt(1000).unwrap(), "e1")
    }

    fn changes(event: Value) -> Vec<RowChange> {
        contact_changes(event.to_string().as_bytes(), &version()).unwrap()
    }

    fn base(kind: &str) -> Value {
        json!({"eventId": 1, "portalId": 7, "occurredAt": 1000, "objectId": 42,
               "subscriptionType": format!("contact.{kind}")})
    }

    #[test]
    fn property_changes_land_on_canonical_fields() {
        let mut e = base("propertyChange");
        e["propertyName"] = json!("firstname");
        e["propertyValue"] = json!("Ada");
        let c = changes(e.clone());
        assert_eq!(c[0].remote_id.as_str(), "42");
        assert_eq!(c[0].fields.fields["first_name"], json!("Ada"));
        e["propertyName"] = json!("favourite_colour");
        e["propertyValue"] = json!("");
        assert_eq!(changes(e)[0].fields.fields["favourite_colour"], Value::Null);
    }

    #[test]
    fn custom_properties_never_overwrite_canonical_fields() {
        assert_eq!(contact_field("firstname"), "first_name");
        assert_eq!(contact_field("phone"), "phone");
        assert_eq!(contact_field("first_name"), "hubspot.first_name");
        assert_eq!(contact_field("favourite_colour"), "favourite_colour");
    }

    #[test]
    fn companies_and_deals_map_their_own_properties() {
        let mut e = base("propertyChange");
        e["subscriptionType"] = json!("deal.propertyChange");
        e["propertyName"] = json!("dealname");
        e["propertyValue"] = json!("Renewal");
        let c = super::changes("deal", e.to_string().as_bytes(), &version()).unwrap();
        assert_eq!(c[0].fields.fields["name"], json!("Renewal"));
        e["propertyName"] = json!("name");
        let c = super::changes("company", e.to_string().as_bytes(), &version()).unwrap();
        assert_eq!(c[0].fields.fields["name"], json!("Renewal"));
        assert!(super::changes("ticket", e.to_string().as_bytes(), &version()).is_err());
    }

    #[test]
    fn association_changes_become_link_rows() {
        let mut e = base("associationChange");
        e["associationType"] = json!("CONTACT_TO_COMPANY");
        e["fromObjectId"] = json!(42);
        e["toObjectId"] = json!(7);
        e["associationRemoved"] = json!(true);
        let c = association_changes(e.to_string().as_bytes(), &version()).unwrap();
        assert_eq!(c[0].remote_id.as_str(), "contact|42|company|7");
        assert_eq!(c[0].fields.fields["$removed"], json!(true));
        assert!(
            association_changes(base("creation").to_string().as_bytes(), &version())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn deletes_are_tombstones_and_restores_revive() {
        assert!(changes(base("deletion"))[0].fields.is_deleted());
        assert!(!changes(base("restore"))[0].fields.is_deleted());
        assert!(!changes(base("creation"))[0].fields.is_deleted());
    }

    #[test]
    fn merges_point_the_losers_at_the_survivor() {
        let mut e = base("merge");
        e["primaryObjectId"] = json!(42);
        e["mergedObjectIds"] = json!([43]);
        e["newObjectId"] = json!(99);
        let c = changes(e);
        let ids: Vec<&str> = c.iter().map(|c| c.remote_id.as_str()).collect();
        assert_eq!(ids, ["99", "43", "42"]);
        assert_eq!(c[1].fields.fields[MERGED_INTO], json!("99"));
        assert_eq!(c[2].fields.fields[MERGED_INTO], json!("99"));
    }

    #[test]
    fn broken_events_are_malformed() {
        assert!(contact_changes(b"{}", &version()).is_err());
        assert!(
            contact_changes(base("propertyChange").to_string().as_bytes(), &version()).is_err()
        );
    }
}
