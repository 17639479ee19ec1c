//! A call outcome as a HubSpot `calls` engagement, associated with the contact (194)
//! and the deal (206); the idempotency key ends its title, found again by search.

use serde_json::json;
use sqlx::PgPool;

use crmsync_ingest::calls::Command;
use crmsync_schema::Provider;

use super::{account_of, body_text, resolve_contact, resolve_deal, title, PushError};
use crate::hubspot::HubSpot;

/// The call engagement made for `command`, if any.
pub async fn find(hs: &HubSpot, command: &Command) -> Result<Option<String>, PushError> {
    let client = hs.client(&command.workspace).await?;
    let existing = client
        .search(
            "calls",
            &json!({
                "filterGroups": [{"filters": [{"propertyName": "hs_call_title",
                    "operator": "CONTAINS_TOKEN", "value": command.key}]}],
                "properties": ["hs_call_title"],
                // Newest first, a page of 100: an earlier attempt's call is recent,
                // and a search that matches words may also list other pushes' calls.
                "sorts": [{"propertyName": "hs_createdate", "direction": "DESCENDING"}],
                "limit": 100,
            }),
        )
        .await?;
    // The search matches tokens, not text: only a title that ends with the key itself
    // is this push's.
    let ending = format!("[{}]", command.key);
    Ok(existing
        .results
        .iter()
        .find(|r| {
            r.properties
                .get("hs_call_title")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.ends_with(&ending))
        })
        .map(|r| r.id.clone()))
}

pub async fn push(hs: &HubSpot, pool: &PgPool, command: &Command) -> Result<String, PushError> {
    let portal = account_of(pool, &command.workspace, Provider::HubSpot).await?;
    if let Some(found) = find(hs, command).await? {
        return Ok(found);
    }
    let client = hs.client(&command.workspace).await?;
    let o = &command.outcome;
    let contact = resolve_contact(pool, Provider::HubSpot, &portal, command).await?;
    let deal = resolve_deal(pool, Provider::HubSpot, &portal, command).await?;
    let mut associations = Vec::new();
    for (id, type_id) in [(contact, 194), (deal, 206)] {
        if let Some(id) = id {
            associations.push(json!({"to": {"id": id}, "types": [
                {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}));
        }
    }
    let body = json!({
        "properties": {
            "hs_timestamp": o.started_at.timestamp_millis().to_string(),
            "hs_call_title": format!("{} [{}]", title(command), command.key),
            "hs_call_body": body_text(command),
            "hs_call_duration": (o.duration_secs * 1000).to_string(),
            "hs_call_direction": o.direction.to_uppercase(),
            "hs_call_disposition": o.disposition,
            "hs_call_status": "COMPLETED",
            "hs_call_recording_url": o.recording_url.clone().unwrap_or_default(),
        },
        "associations": associations,
    });
    Ok(client.create("calls", &body).await?.id)
}
