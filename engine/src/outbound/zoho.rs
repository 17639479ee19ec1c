//! A call outcome as a Zoho `Calls` record linked by `Who_Id` (the contact) and
//! `What_Id` (the deal); its subject starts with the idempotency key, found again by
//! search.

use serde_json::{json, Value};
use sqlx::PgPool;

use crmsync_ingest::calls::Command;
use crmsync_schema::Provider;

use super::{account_of, body_text, resolve_contact, title, PushError};
use crate::zoho::Zoho;

/// The Calls record made for `command`, if any.
pub async fn find(zoho: &Zoho, command: &Command) -> Result<Option<String>, PushError> {
    let client = zoho.client(&command.workspace).await?;
    let existing = client
        .search("Calls", &format!("(Subject:starts_with:[{}])", command.key))
        .await?;
    Ok(existing
        .iter()
        .find_map(|r| r.get("id").and_then(Value::as_str))
        .map(str::to_owned))
}

pub async fn push(zoho: &Zoho, pool: &PgPool, command: &Command) -> Result<String, PushError> {
    let org = account_of(pool, &command.workspace, Provider::Zoho).await?;
    if let Some(found) = find(zoho, command).await? {
        return Ok(found);
    }
    let client = zoho.client(&command.workspace).await?;
    let subject_start = format!("[{}]", command.key);
    let o = &command.outcome;
    let contact = resolve_contact(pool, Provider::Zoho, &org, o.contact.as_ref()).await?;
    let mut record = json!({
        "Subject": format!("{subject_start} {}", title(command)),
        "Call_Type": if o.direction == "inbound" { "Inbound" } else { "Outbound" },
        "Call_Start_Time": o.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        "Call_Duration": format!("{:02}:{:02}", o.duration_secs / 60, o.duration_secs % 60),
        "Call_Result": o.disposition,
        "Description": body_text(command),
    });
    if let Some(id) = contact {
        record["Who_Id"] = json!({"id": id});
    }
    if let Some(deal) = o.deal.as_ref().and_then(|d| d.crm_id.clone()) {
        record["What_Id"] = json!({"id": deal});
        record["$se_module"] = json!("Deals");
    }
    let answer = client.insert("Calls", &[record]).await?;
    let first = answer.pointer("/data/0").cloned().unwrap_or(Value::Null);
    match first.pointer("/details/id").and_then(Value::as_str) {
        Some(id) if first.get("status").and_then(Value::as_str) == Some("success") => {
            Ok(id.to_owned())
        }
        // Zoho's code and message only: its details may echo the record's values.
        _ => Err(PushError::Fail(
            format!(
                "Zoho refused the call: {} {}",
                first
                    .get("code")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown"),
                first
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )
            .into(),
        )),
    }
}
