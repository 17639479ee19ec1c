//! Zoho records onto the canonical model.
//!
//! A snapshot (a record as the API answers it) sets every field it carries at the
//! record's `Modified_Time`: standard fields under canonical names, lookups as the
//! linked id (and its name), `Owner` as `owner_id`, empty strings as null, and every
//! other field (custom ones included) under its API name — or `zoho.<name>` where
//! that name is a canonical field's, so a custom field cannot overwrite a mapped one.
//! Multi-select picklists stay arrays, dates stay `YYYY-MM-DD`, date-times (sent in
//! the org's zone) become UTC. The lookups are also the record's links (contact → company, deal →
//! contact, deal → company), each single-valued, so a snapshot retracts the others.

use serde_json::Value;

use crmsync_schema::fields::DELETED;
use crmsync_schema::subject::escape_token;
use crmsync_schema::{FieldSet, RemoteId, Version};

use crate::{MappingError, Retraction, RowChange};

/// How one Zoho field lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A plain value under this canonical name.
    Field(&'static str),
    /// A lookup: the linked id under `id`, its name under `name`, and a link to
    /// `object` records.
    Lookup {
        id: &'static str,
        name: Option<&'static str>,
        object: &'static str,
    },
}

use Target::{Field, Lookup};

/// Zoho Contacts fields with a canonical place.
pub const CONTACT_FIELDS: &[(&str, Target)] = &[
    ("Email", Field("email")),
    ("First_Name", Field("first_name")),
    ("Last_Name", Field("last_name")),
    ("Phone", Field("phone")),
    ("Mobile", Field("mobile_phone")),
    ("Title", Field("job_title")),
    ("Mailing_City", Field("city")),
    ("Mailing_Country", Field("country")),
    ("Lead_Source", Field("lead_source")),
    ("Owner", Field("owner_id")),
    (
        "Account_Name",
        Lookup {
            id: "company_id",
            name: Some("company_name"),
            object: "company",
        },
    ),
];

/// Zoho Accounts fields with a canonical place.
pub const COMPANY_FIELDS: &[(&str, Target)] = &[
    ("Account_Name", Field("name")),
    ("Website", Field("website")),
    ("Phone", Field("phone")),
    ("Industry", Field("industry")),
    ("Billing_City", Field("city")),
    ("Billing_Country", Field("country")),
    ("Employees", Field("employees")),
    ("Annual_Revenue", Field("annual_revenue")),
    ("Owner", Field("owner_id")),
];

/// Zoho Deals fields with a canonical place.
pub const DEAL_FIELDS: &[(&str, Target)] = &[
    ("Deal_Name", Field("name")),
    ("Amount", Field("amount")),
    ("Stage", Field("stage")),
    ("Closing_Date", Field("close_date")),
    ("Probability", Field("probability")),
    ("Owner", Field("owner_id")),
    (
        "Account_Name",
        Lookup {
            id: "company_id",
            name: Some("company_name"),
            object: "company",
        },
    ),
    (
        "Contact_Name",
        Lookup {
            id: "contact_id",
            name: Some("contact_name"),
            object: "contact",
        },
    ),
];

/// Zoho Calls fields with a canonical place (activities). `What_Id` names an account,
/// deal or lead (by its `$se_module`), so it stays under its API name.
pub const ACTIVITY_FIELDS: &[(&str, Target)] = &[
    ("Subject", Field("subject")),
    ("Description", Field("body")),
    ("Call_Type", Field("direction")),
    ("Call_Start_Time", Field("started_at")),
    ("Call_Duration", Field("duration")),
    ("Call_Duration_in_seconds", Field("duration_secs")),
    ("Call_Result", Field("disposition")),
    ("Call_Purpose", Field("purpose")),
    ("Owner", Field("owner_id")),
    (
        "Who_Id",
        Lookup {
            id: "contact_id",
            name: Some("contact_name"),
            object: "contact",
        },
    ),
];

/// The API names read for each synced module (Zoho wants them listed, ≤ 50): the
/// mapped ones, the other standard fields, and the modification time.
pub fn fields_to_read(module: &str) -> &'static [&'static str] {
    match module {
        "Contacts" => &[
            "First_Name",
            "Last_Name",
            "Email",
            "Secondary_Email",
            "Phone",
            "Mobile",
            "Title",
            "Department",
            "Lead_Source",
            "Account_Name",
            "Mailing_City",
            "Mailing_Country",
            "Date_of_Birth",
            "Email_Opt_Out",
            "Interests",
            "Description",
            "Owner",
            "Created_Time",
            "Modified_Time",
        ],
        "Accounts" => &[
            "Account_Name",
            "Website",
            "Phone",
            "Industry",
            "Account_Type",
            "Employees",
            "Annual_Revenue",
            "Billing_City",
            "Billing_Country",
            "Description",
            "Owner",
            "Created_Time",
            "Modified_Time",
        ],
        "Deals" => &[
            "Deal_Name",
            "Amount",
            "Stage",
            "Probability",
            "Closing_Date",
            "Account_Name",
            "Contact_Name",
            "Type",
            "Lead_Source",
            "Next_Step",
            "Description",
            "Owner",
            "Created_Time",
            "Modified_Time",
        ],
        "Calls" => &[
            "Subject",
            "Call_Type",
            "Call_Start_Time",
            "Call_Duration",
            "Call_Duration_in_seconds",
            "Call_Purpose",
            "Call_Result",
            "Description",
            "Who_Id",
            "What_Id",
            "Owner",
            "Created_Time",
            "Modified_Time",
        ],
        _ => &["Modified_Time"],
    }
}

/// The mapping table of an object type, if crmsync projects it.
pub fn fields_of(object: &str) -> Option<&'static [(&'static str, Target)]> {
    match object {
        "contact" => Some(CONTACT_FIELDS),
        "company" => Some(COMPANY_FIELDS),
        "deal" => Some(DEAL_FIELDS),
        "activity" => Some(ACTIVITY_FIELDS),
        _ => None,
    }
}

/// Where each mapped field of `object` lands by default: `(API name, field)`; a
/// lookup lands as its id and its name.
pub fn default_targets(object: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (zoho, target) in fields_of(object).unwrap_or_default() {
        match target {
            Field(c) => out.push(((*zoho).to_owned(), (*c).to_owned())),
            Lookup { id, name, .. } => {
                out.push(((*zoho).to_owned(), (*id).to_owned()));
                out.extend(name.map(|n| ((*zoho).to_owned(), n.to_owned())));
            }
        }
    }
    out
}

/// The field an API name of `object` lands as by default (a lookup: its id).
pub fn landing(object: &str, field: &str) -> String {
    let table = fields_of(object).unwrap_or_default();
    match table
        .iter()
        .find(|(zoho, _)| *zoho == field)
        .map(|(_, t)| *t)
    {
        Some(Field(c)) => c.to_owned(),
        Some(Lookup { id, .. }) => id.to_owned(),
        None => canonical_name(table, field),
    }
}

/// Fields that describe the record rather than hold data.
const SYSTEM: &[&str] = &[
    "id",
    "Created_Time",
    "Modified_Time",
    "Created_By",
    "Modified_By",
    "Full_Name",
];

fn malformed(reason: impl Into<String>) -> MappingError {
    MappingError::Malformed {
        provider: "zoho",
        reason: reason.into(),
    }
}

fn remote_id(id: &str) -> Result<RemoteId, MappingError> {
    RemoteId::parse(id).map_err(|e| malformed(e.to_string()))
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A record's id.
pub fn record_id(record: &Value) -> Option<String> {
    record.get("id").and_then(id_text)
}

/// The canonical name of an unmapped field.
fn canonical_name(table: &[(&str, Target)], field: &str) -> String {
    let taken = table.iter().any(|(_, t)| match t {
        Field(c) => *c == field,
        Lookup { id, name, .. } => *id == field || *name == Some(field),
    });
    if taken {
        format!("zoho.{field}")
    } else {
        field.to_owned()
    }
}

fn plain(value: &Value) -> Value {
    match value {
        Value::String(s) if s.is_empty() => Value::Null,
        // Date-times come in the org's zone: canonical ones are UTC.
        Value::String(s) if s.len() >= 20 && s.as_bytes()[10] == b'T' => {
            match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) => Value::String(
                    t.with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                ),
                Err(_) => value.clone(),
            }
        }
        // A lookup or user reference: its id is what identifies it.
        Value::Object(o) if o.contains_key("id") && o.len() <= 3 => o
            .get("id")
            .and_then(id_text)
            .map_or(Value::Null, Value::String),
        other => other.clone(),
    }
}

/// Normalises a snapshot of a `object` record into its row change.
pub fn snapshot_changes(
    object: &str,
    data: &[u8],
    version: &Version,
) -> Result<Vec<RowChange>, MappingError> {
    let table = fields_of(object).ok_or_else(|| malformed(format!("no mapping for {object}")))?;
    let record: serde_json::Map<String, Value> =
        serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let id = record
        .get("id")
        .and_then(id_text)
        .ok_or_else(|| malformed("a record without an id"))?;
    let mut fields = FieldSet::default();
    fields.set(DELETED, Value::Bool(false), version);
    for (name, value) in &record {
        if name.starts_with('$') || SYSTEM.contains(&name.as_str()) {
            continue;
        }
        match table.iter().find(|(zoho, _)| zoho == name).map(|(_, t)| *t) {
            Some(Field(canonical)) => fields.set(canonical, plain(value), version),
            Some(Lookup {
                id, name: label, ..
            }) => {
                fields.set(id, plain(value), version);
                if let Some(label) = label {
                    let text = value.get("name").cloned().unwrap_or(Value::Null);
                    fields.set(label, plain(&text), version);
                }
                true
            }
            None => fields.set(&canonical_name(table, name), plain(value), version),
        };
    }
    Ok(vec![RowChange {
        remote_id: remote_id(&id)?,
        fields,
    }])
}

/// The links a snapshot states: each lookup is the record's only link to its object
/// type, so the retraction removes any other.
pub fn snapshot_links(
    object: &str,
    data: &[u8],
    version: &Version,
) -> Result<(Vec<RowChange>, Vec<Retraction>), MappingError> {
    let Some(table) = fields_of(object) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let record: serde_json::Map<String, Value> =
        serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let from = record
        .get("id")
        .and_then(id_text)
        .ok_or_else(|| malformed("a record without an id"))?;
    let mut rows = Vec::new();
    let mut retractions = Vec::new();
    for (zoho, target) in table {
        let Lookup { object: to, .. } = target else {
            continue;
        };
        let Some(value) = record.get(*zoho) else {
            continue;
        };
        let linked = value.get("id").and_then(id_text);
        if let Some(to_id) = &linked {
            let link = [object, from.as_str(), to, to_id.as_str()]
                .iter()
                .map(|p| escape_token(p))
                .collect::<Vec<_>>()
                .join("|");
            let mut fields = FieldSet::default();
            fields.set("$removed", Value::Bool(false), version);
            rows.push(RowChange {
                remote_id: remote_id(&link)?,
                fields,
            });
        }
        retractions.push(Retraction {
            from_type: escape_token(object),
            from_id: escape_token(&from),
            to_type: escape_token(to),
            keep: linked.iter().map(|t| escape_token(t)).collect(),
            version: version.clone(),
        });
    }
    Ok((rows, retractions))
}

/// Normalises a deletion — a row of the deleted-records API (`{"id": …}`) or a
/// delete notification (`{"ids": […]}`) — into tombstones.
pub fn deleted_changes(data: &[u8], version: &Version) -> Result<Vec<RowChange>, MappingError> {
    let value: Value = serde_json::from_slice(data).map_err(|e| malformed(e.to_string()))?;
    let ids: Vec<String> = match (value.get("id"), value.get("ids")) {
        (Some(id), _) => id_text(id).into_iter().collect(),
        (None, Some(Value::Array(ids))) => ids.iter().filter_map(id_text).collect(),
        _ => Vec::new(),
    };
    if ids.is_empty() {
        return Err(malformed("a deletion without a record id"));
    }
    ids.iter()
        .map(|id| {
            let mut fields = FieldSet::default();
            fields.set(DELETED, Value::Bool(true), version);
            Ok(RowChange {
                remote_id: remote_id(id)?,
                fields,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn version() -> Version {
        Version::new(Utc.timestamp_millis_opt(1000).unwrap(), "e1")
    }

    fn contact() -> Value {
        json!({
            "id": "5725767000000411001",
            "First_Name": "Ada",
            "Last_Name": "Lovelace",
            "Email": "ada@example.com",
            "Phone": "",
            "Owner": {"name": "Pat", "id": "5725767000000100001", "email": "pat@example.com"},
            "Account_Name": {"name": "Analytical Engines", "id": "5725767000000412001"},
            "Interests": ["Analytics", "Security"],
            "Date_of_Birth": "1815-12-10",
            "Email_Opt_Out": false,
            "Last_Call": "2024-05-01T10:00:00+05:30",
            "Modified_Time": "2024-05-01T10:00:00+05:30",
            "company_id": "custom value",
            "$approved": true,
        })
    }

    #[test]
    fn snapshots_land_on_canonical_fields() {
        let c = snapshot_changes("contact", contact().to_string().as_bytes(), &version()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].remote_id.as_str(), "5725767000000411001");
        let f = &c[0].fields.fields;
        assert_eq!(f["first_name"], json!("Ada"));
        assert_eq!(f["email"], json!("ada@example.com"));
        assert_eq!(f["phone"], Value::Null);
        assert_eq!(f["owner_id"], json!("5725767000000100001"));
        assert_eq!(f["company_id"], json!("5725767000000412001"));
        assert_eq!(f["company_name"], json!("Analytical Engines"));
        assert_eq!(f["Interests"], json!(["Analytics", "Security"]));
        assert_eq!(f["Date_of_Birth"], json!("1815-12-10"));
        assert_eq!(f["Email_Opt_Out"], json!(false));
        assert_eq!(f["Last_Call"], json!("2024-05-01T04:30:00Z"));
        assert_eq!(f["zoho.company_id"], json!("custom value"));
        assert!(!f.contains_key("Modified_Time"));
        assert!(!f.contains_key("$approved"));
        assert!(!c[0].fields.is_deleted());
    }

    #[test]
    fn lookups_are_links_and_retract_the_others() {
        let deal = json!({"id": "9", "Deal_Name": "Renewal", "Amount": 1200.5,
                          "Contact_Name": {"name": "Ada", "id": "1"}, "Account_Name": null});
        let (rows, retractions) =
            snapshot_links("deal", deal.to_string().as_bytes(), &version()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].remote_id.as_str(), "deal|9|contact|1");
        assert_eq!(retractions.len(), 2);
        let company = retractions.iter().find(|r| r.to_type == "company").unwrap();
        assert!(company.keep.is_empty(), "a cleared lookup removes the link");
        let d = snapshot_changes("deal", deal.to_string().as_bytes(), &version()).unwrap();
        assert_eq!(d[0].fields.fields["amount"], json!(1200.5));
        assert_eq!(d[0].fields.fields["company_id"], Value::Null);
    }

    #[test]
    fn deletions_are_tombstones_from_either_source() {
        let from_api = deleted_changes(br#"{"id": "42", "type": "recycle"}"#, &version()).unwrap();
        assert!(from_api[0].fields.is_deleted());
        let notified = deleted_changes(
            br#"{"ids": ["42", "43"], "operation": "delete"}"#,
            &version(),
        )
        .unwrap();
        assert_eq!(notified.len(), 2);
        assert!(deleted_changes(b"{}", &version()).is_err());
        assert!(snapshot_changes("contact", b"{}", &version()).is_err());
        assert!(snapshot_changes("ticket", contact().to_string().as_bytes(), &version()).is_err());
    }
}
