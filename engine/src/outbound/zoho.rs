//! A call outcome as a Zoho `Calls` record linked by `Who_Id` (the contact) and
//! `What_Id` (the deal); its subject starts with the idempotency key, found again by
//! search.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sqlx::PgPool;

use crmsync_adapters::zoho::mapping;
use crmsync_ingest::calls::Command;
use crmsync_schema::{Provider, Version};

use super::{account_of, body_text, resolve_contact, resolve_deal, title, PushError, Reason};
use crate::zoho::Zoho;

/// The Calls record made for `command`, if any.
pub async fn find(zoho: &Zoho, command: &Command) -> Result<Option<String>, PushError> {
    let client = zoho.client(&command.workspace).await?;
    let existing = client
        .search("Calls", &format!("(Subject:starts_with:[{}])", command.key))
        .await?;
    // Zoho's search matches words: only a subject that starts with the key itself is
    // this push's.
    let start = format!("[{}]", command.key);
    Ok(existing
        .iter()
        .filter(|r| {
            r.get("Subject")
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(&start))
        })
        .find_map(|r| r.get("id").and_then(Value::as_str))
        .map(str::to_owned))
}

/// The Calls record of `command`, without its links.
fn call_record(command: &Command) -> Value {
    let o = &command.outcome;
    json!({
        "Subject": format!("[{}] {}", command.key, title(command)),
        "Call_Type": if o.direction == "inbound" { "Inbound" } else { "Outbound" },
        "Call_Start_Time": o.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "Call_Duration": format!("{:02}:{:02}", o.duration_secs / 60, o.duration_secs % 60),
        "Call_Result": o.disposition,
        "Description": body_text(command),
    })
}

/// The fields crmsync wrote, as the Zoho mapping reads them back (with the seconds
/// Zoho computes from the duration).
pub fn app_fields(command: &Command, crm_id: &str) -> BTreeMap<String, Value> {
    let mut record = call_record(command);
    record["id"] = json!(crm_id);
    record["Call_Duration_in_seconds"] = json!(command.outcome.duration_secs);
    let version = Version::new(chrono::Utc::now(), "app");
    mapping::snapshot_changes("activity", record.to_string().as_bytes(), &version)
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .map(|row| {
            row.fields
                .fields
                .into_iter()
                .filter(|(f, _)| !f.starts_with('$'))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn push(zoho: &Zoho, pool: &PgPool, command: &Command) -> Result<String, PushError> {
    let org = account_of(pool, &command.workspace, Provider::Zoho).await?;
    if let Some(found) = find(zoho, command).await? {
        return Ok(found);
    }
    let client = zoho.client(&command.workspace).await?;
    let contact = resolve_contact(pool, Provider::Zoho, &org, command).await?;
    let mut record = call_record(command);
    if let Some(id) = contact {
        record["Who_Id"] = json!({"id": id});
    }
    if let Some(deal) = resolve_deal(pool, Provider::Zoho, &org, command).await? {
        record["What_Id"] = json!({"id": deal});
        record["$se_module"] = json!("Deals");
    }
    let answer = client.insert("Calls", &[record]).await?;
    let first = answer.pointer("/data/0").cloned().unwrap_or(Value::Null);
    match first.pointer("/details/id").and_then(Value::as_str) {
        Some(id) if first.get("status").and_then(Value::as_str) == Some("success") => {
            Ok(id.to_owned())
        }
        // Zoho's code and message only: its details may echo the record's values
        // (and the log line has the code alone).
        _ => {
            let code = first
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let message = first
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Err(PushError::Fail(Reason {
                text: format!("Zoho refused the call: {code} {message}"),
                log: format!("Zoho refused the call: {code}"),
                kind: None,
            }))
        }
    }
}
