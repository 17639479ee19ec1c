//! The `mail.thread` side: `message_post`, messages logged on records, and done
//! activities.
//!
//! Odoo facts kept here: `message_post` takes keyword arguments only, wants exactly
//! one record (`Expected singleton` otherwise) and answers the new message; a `str`
//! body is text — escaped and wrapped in `<p>` — unless `body_is_html` is true;
//! `subtype_xmlid` `mail.mt_note` is a note (subtype 2), `mail.mt_comment` a
//! discussion (1); the author is the user's partner. Marking an activity done
//! (`action_done`, `action_feedback`) logs a notification with the Activities subtype
//! on its record and deletes the activity ("keep done activities" off, the default).
//! None of this touches the record's `write_date`.

use serde_json::{json, Map, Value};

use super::errors::OdooError;
use super::models::{Model, SUBTYPES};
use super::store::{self, Env, Store};

type Params = Map<String, Value>;

fn records_repr(model: &str, ids: &[i64]) -> String {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    if ids.len() == 1 {
        format!("{model}({},)", list[0])
    } else {
        format!("{model}({})", list.join(", "))
    }
}

/// The admin's partner: the author of messages posted over RPC.
fn author_of(db: &Store, uid: i64) -> Value {
    db.stored("res.users", uid, "partner_id")
}

pub(crate) fn message_post(
    db: &mut Store,
    model: &'static Model,
    ids: &[i64],
    p: &Params,
    env: &Env,
) -> Result<i64, OdooError> {
    let [id] = ids else {
        return Err(OdooError::value_error(format!(
            "Expected singleton: {}",
            records_repr(model.name, ids)
        )));
    };
    if !db.exists(model.name, *id) {
        return Err(OdooError::missing(format!(
            "Record does not exist or has been deleted.\n(Record: {}, User: {})",
            records_repr(model.name, ids),
            env.uid
        )));
    }
    let subtype = match (p.get("subtype_xmlid"), p.get("subtype_id")) {
        (Some(Value::String(x)), _) => Some(
            SUBTYPES
                .iter()
                .find(|s| s.1 == x)
                .map(|s| s.0)
                .ok_or_else(|| {
                    OdooError::value_error(format!("External ID not found in the system: {x}"))
                })?,
        ),
        (_, Some(Value::Number(n))) => n.as_i64(),
        _ => None,
    };
    let message_type = p
        .get("message_type")
        .and_then(Value::as_str)
        .unwrap_or("notification");
    let body_is_html = p.get("body_is_html") == Some(&Value::Bool(true));
    let body = match p.get("body") {
        // A str body is text, escaped, unless the caller says it is html.
        Some(Value::String(s)) if !body_is_html => {
            Value::String(format!("<p>{}</p>", store::escape_html(s)))
        }
        Some(v) => v.clone(),
        None => json!(""),
    };
    post_message(
        db,
        model,
        *id,
        &Map::from_iter([
            ("body".to_owned(), body),
            (
                "subject".to_owned(),
                p.get("subject").cloned().unwrap_or(Value::Null),
            ),
            ("message_type".to_owned(), json!(message_type)),
            (
                "subtype_id".to_owned(),
                subtype.map_or(Value::Null, |s| json!(s)),
            ),
            (
                "author_id".to_owned(),
                p.get("author_id")
                    .cloned()
                    .unwrap_or_else(|| author_of(db, env.uid)),
            ),
        ]),
        env,
    )
}

/// Logs a message on a record (`mail.message` with `model`, `res_id`, `record_name`).
pub(crate) fn post_message(
    db: &mut Store,
    model: &'static Model,
    id: i64,
    vals: &Map<String, Value>,
    env: &Env,
) -> Result<i64, OdooError> {
    let messages = db.model("mail.message")?;
    let record_name = db
        .row(model.name, id)
        .map(|r| db.display_name(model, r))
        .unwrap_or_default();
    let mut vals = vals.clone();
    vals.insert("model".into(), json!(model.name));
    vals.insert("res_id".into(), json!(id));
    vals.insert("record_name".into(), json!(record_name));
    let row = db.prepare_create(messages, &vals, env)?;
    let mid = db.alloc_id(messages.name);
    db.insert(messages, mid, row, env);
    Ok(mid)
}

/// Marks activities done: each one is logged on its record and deleted.
pub(crate) fn activity_done(
    db: &mut Store,
    ids: &[i64],
    feedback: &str,
    env: &Env,
) -> Result<Option<i64>, OdooError> {
    let activities = db.model("mail.activity")?;
    let mut first = None;
    for &id in ids {
        let Some(row) = db.row(activities.name, id) else {
            continue;
        };
        let target_model = row.vals[activities.magic("res_model")]
            .as_str()
            .and_then(|name| db.model(name).ok());
        let target_id = row.vals[activities.magic("res_id")].as_i64();
        let label = db.display_name(activities, row);
        let summary = db.stored(activities.name, id, "summary");
        if let (Some(tm), Some(tid)) = (target_model, target_id) {
            if db.exists(tm.name, tid) {
                let mut body = format!("<div><p>{label} done</p>");
                if !feedback.is_empty() {
                    // The "done" template prints the feedback as text, line by line.
                    let lines: Vec<String> = feedback.split('\n').map(store::escape_html).collect();
                    body.push_str(&format!("<div>Feedback: {}</div>", lines.join("<br>")));
                }
                body.push_str("</div>");
                let mid = post_message(
                    db,
                    tm,
                    tid,
                    &Map::from_iter([
                        ("body".to_owned(), json!(body)),
                        ("subject".to_owned(), summary),
                        ("message_type".to_owned(), json!("notification")),
                        ("subtype_id".to_owned(), json!(3)),
                        ("author_id".to_owned(), author_of(db, env.uid)),
                    ]),
                    env,
                )?;
                first.get_or_insert(mid);
            }
        }
        db.remove(activities, &[id]);
    }
    Ok(first)
}
