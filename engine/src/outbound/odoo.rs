//! A call outcome as a note posted on the Odoo partner (or the lead, for a deal),
//! carrying the idempotency key in a marker that a search of `mail.message` finds.

use serde_json::{json, Map, Value};
use sqlx::PgPool;

use crmsync_ingest::calls::Command;
use crmsync_schema::Provider;

use super::{account_of, body_text, resolve_contact, title, PushError};
use crate::odoo::Odoo;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The note posted for `command`, if any — by the key alone: the record the note went
/// on may since have changed.
pub async fn find(odoo: &Odoo, command: &Command) -> Result<Option<String>, PushError> {
    let connection = odoo.connection(&command.workspace).await?;
    let client = odoo.client(&connection).await?;
    let existing = client
        .search_ids("mail.message", json!([["body", "ilike", command.key]]))
        .await?;
    Ok(existing.first().map(|id| id.to_string()))
}

pub async fn push(odoo: &Odoo, pool: &PgPool, command: &Command) -> Result<String, PushError> {
    let account = account_of(pool, &command.workspace, Provider::Odoo).await?;
    let connection = odoo.connection(&command.workspace).await?;
    let client = odoo.client(&connection).await?;
    let o = &command.outcome;
    let (model, id) = match o.deal.as_ref().and_then(|d| d.crm_id.clone()) {
        Some(lead) => ("crm.lead", lead),
        None => {
            let partner = resolve_contact(pool, Provider::Odoo, &account, o.contact.as_ref())
                .await?
                .ok_or_else(|| PushError::Fail("no Odoo partner for the call".into()))?;
            ("res.partner", partner)
        }
    };
    let id: i64 = id
        .parse()
        .map_err(|_| PushError::Fail(format!("{id:?} is not an Odoo record id").into()))?;
    if let Some(found) = find(odoo, command).await? {
        return Ok(found);
    }
    let text = body_text(command);
    let body = format!(
        "<p><b>{}</b> ({} s, {})</p>{}<p data-crmsync=\"{}\">crmsync {}</p>",
        escape(&title(command)),
        o.duration_secs,
        o.started_at.to_rfc3339(),
        text.split("\n\n")
            .map(|p| format!("<p>{}</p>", escape(p)))
            .collect::<String>(),
        command.key,
        command.key,
    );
    let mut named = Map::new();
    named.insert("body".into(), json!(body));
    named.insert("message_type".into(), json!("comment"));
    named.insert("subtype_xmlid".into(), json!("mail.mt_note"));
    let answer = client
        .call_once(model, "message_post", Some(&[id]), named)
        .await?;
    match answer {
        Value::Number(n) => Ok(n.to_string()),
        Value::Array(ids) if !ids.is_empty() => Ok(ids[0].to_string()),
        other => Err(PushError::Retry(
            format!("message_post answered {other}").into(),
        )),
    }
}
