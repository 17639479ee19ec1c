//! A call outcome as a note posted on the Odoo partner (or the lead, for a deal),
//! carrying the idempotency key in a marker that a search of `mail.message` finds.
//!
//! Where the connection asks for it (`log_activity`), the call is logged as a done
//! "Call" activity instead: a `mail.activity` (its summary names the key) marked done
//! with the note as feedback, which Odoo logs as a message on the record. The two
//! steps are resumable: an open activity with the key is completed, not made again.

use serde_json::{json, Map, Value};
use sqlx::PgPool;

use crmsync_adapters::odoo::client::OdooClient;
use crmsync_ingest::calls::Command;
use crmsync_schema::Provider;

use super::{account_of, body_text, resolve_contact, resolve_deal, title, PushError, Reason};
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
    let (model, id) = match resolve_deal(pool, Provider::Odoo, &account, command).await? {
        Some(lead) => ("crm.lead", lead),
        None => {
            let partner = resolve_contact(pool, Provider::Odoo, &account, command)
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
    let log_activity = connection
        .settings
        .get("log_activity")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let answer = if log_activity {
        let activity = match open_activity(&client, command).await? {
            Some(activity) => activity,
            None => create_activity(&client, command, model, id).await?,
        };
        // The feedback is text: Odoo renders it into the "done" message escaped.
        let mut named = Map::new();
        named.insert("feedback".into(), json!(feedback_text(command)));
        client
            .call_once("mail.activity", "action_feedback", Some(&[activity]), named)
            .await?
    } else {
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
        if client.major() >= 17 {
            // Since Odoo 17 a body sent as a string is text, escaped, unless said.
            named.insert("body_is_html".into(), json!(true));
        }
        named.insert("message_type".into(), json!("comment"));
        named.insert("subtype_xmlid".into(), json!("mail.mt_note"));
        client
            .call_once(model, "message_post", Some(&[id]), named)
            .await?
    };
    first_id(&answer)
        .map(|id| id.to_string())
        .ok_or_else(|| unexpected(&answer, "the call"))
}

/// The call as plain text, for an activity's feedback: its title, length and time,
/// the summary and notes, and the key that finds it again.
fn feedback_text(command: &Command) -> String {
    let o = &command.outcome;
    format!(
        "{} ({} s, {})\n{}\ncrmsync {}",
        title(command),
        o.duration_secs,
        o.started_at.to_rfc3339(),
        body_text(command),
        command.key,
    )
}

/// An answer without an id: worth another attempt (found by its key if it was made);
/// the answer itself kept out of the log.
fn unexpected(answer: &Value, what: &str) -> PushError {
    PushError::Retry(Reason {
        text: format!("Odoo answered {answer} for {what}"),
        log: format!("Odoo answered no id for {what}"),
        kind: None,
    })
}

/// An id answered as a number or the first of a list.
fn first_id(answer: &Value) -> Option<i64> {
    match answer {
        Value::Array(ids) => ids.first().and_then(Value::as_i64),
        other => other.as_i64(),
    }
}

/// The activity of `command` left open by an earlier attempt.
async fn open_activity(client: &OdooClient, command: &Command) -> Result<Option<i64>, PushError> {
    let found = client
        .search_ids("mail.activity", json!([["summary", "ilike", command.key]]))
        .await?;
    Ok(found.first().copied())
}

/// A "Call" activity on the record, due the day of the call, its summary naming the
/// key. Sent once: an ambiguous failure is found by [`open_activity`] next time.
async fn create_activity(
    client: &OdooClient,
    command: &Command,
    model: &str,
    id: i64,
) -> Result<i64, PushError> {
    let models = client
        .search_ids("ir.model", json!([["model", "=", model]]))
        .await?;
    let model_id = *models
        .first()
        .ok_or_else(|| PushError::Fail(format!("Odoo has no model {model}").into()))?;
    let types = client
        .search_ids("mail.activity.type", json!([["name", "=", "Call"]]))
        .await?;
    let mut vals = Map::new();
    vals.insert("res_model_id".into(), json!(model_id));
    vals.insert("res_id".into(), json!(id));
    if let Some(kind) = types.first() {
        vals.insert("activity_type_id".into(), json!(kind));
    }
    vals.insert(
        "summary".into(),
        json!(format!("{} [{}]", title(command), command.key)),
    );
    vals.insert(
        "date_deadline".into(),
        json!(command.outcome.started_at.format("%Y-%m-%d").to_string()),
    );
    let mut named = Map::new();
    named.insert("vals_list".into(), json!([vals]));
    let made = client
        .call_once("mail.activity", "create", None, named)
        .await?;
    first_id(&made).ok_or_else(|| unexpected(&made, "the activity"))
}
