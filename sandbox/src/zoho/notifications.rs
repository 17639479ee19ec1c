//! Notification channels (`/crm/v8/actions/watch`): enable (POST, 201), update (PUT),
//! add or remove events (PATCH with `_delete_events`), list (GET) and disable
//! (DELETE `?channel_ids=`). The callbacks themselves are in `callbacks`.
//!
//! A channel id is a number (sent as a JSON number or a numeric string); `events` are
//! `Module.create|edit|delete|all`; `token` is at most 50 characters; `channel_expiry`
//! must lie within a week (default: one hour). POSTing an existing channel id
//! replaces that channel. Expired channels vanish and stop firing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value as Json};

use super::auth::{Caller, Op};
use super::error::ApiError;
use super::schema::Module;
use super::store::{format_time, now_ms, parse_time, Operation};
use super::ZohoSandbox;

const MAX_TOKEN_CHARS: usize = 50;
const WEEK_MS: i64 = 7 * 24 * 3_600_000;
const DEFAULT_EXPIRY_MS: i64 = 3_600_000;

/// A watched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    Create,
    Edit,
    Delete,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Create => "create",
            Event::Edit => "edit",
            Event::Delete => "delete",
        }
    }

    pub(super) fn of(op: Operation) -> Self {
        match op {
            Operation::Insert => Event::Create,
            Operation::Update => Event::Edit,
            Operation::Delete => Event::Delete,
        }
    }
}

/// A notification channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub id: String,
    pub events: Vec<(Module, Event)>,
    pub notify_url: String,
    pub token: Option<String>,
    pub expiry: i64,
    pub return_affected_field_values: bool,
    pub notify_on_related_action: bool,
    /// Where the channel was made, for `resource_uri`.
    pub api_domain: String,
}

impl Channel {
    fn modules(&self) -> Vec<Module> {
        let mut m: Vec<Module> = self.events.iter().map(|(m, _)| *m).collect();
        m.sort();
        m.dedup();
        m
    }

    pub(super) fn resource_uri(&self, module: Module) -> String {
        format!("{}/crm/v8/{}", self.api_domain, module.name())
    }
}

/// Live channels by id.
#[derive(Debug, Default)]
pub struct Channels {
    by_id: BTreeMap<String, Channel>,
}

impl Channels {
    /// The live channels.
    pub(super) fn live(&mut self) -> Vec<Channel> {
        self.purge();
        self.by_id.values().cloned().collect()
    }

    pub(super) fn purge(&mut self) {
        let now = now_ms();
        self.by_id.retain(|_, c| c.expiry > now);
    }

    pub fn expire_all(&mut self) {
        let past = now_ms() - 1;
        for c in self.by_id.values_mut() {
            c.expiry = past;
        }
    }
}

fn path(index: usize, key: &str) -> String {
    format!("$.watch[{index}].{key}")
}

fn invalid(index: usize, key: &str) -> ApiError {
    ApiError::invalid_body("invalid data")
        .with_details(json!({"api_name": key, "json_path": path(index, key)}))
}

fn channel_id(item: &Map<String, Json>, index: usize) -> Result<String, ApiError> {
    let id = match item.get("channel_id") {
        None | Some(Json::Null) => {
            return Err(
                ApiError::bad_request("MANDATORY_NOT_FOUND", "required field not found")
                    .with_details(
                        json!({"api_name": "channel_id", "json_path": path(index, "channel_id")}),
                    ),
            )
        }
        Some(Json::Number(n)) => n.as_u64().map(|n| n.to_string()),
        Some(Json::String(s)) => Some(s.trim().to_owned()),
        Some(_) => None,
    };
    id.filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| invalid(index, "channel_id"))
}

fn events(v: &Json, index: usize) -> Result<Vec<(Module, Event)>, ApiError> {
    let items = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid(index, "events"))?;
    let mut out = Vec::new();
    for item in items {
        let (module, op) = item
            .as_str()
            .and_then(|s| s.split_once('.'))
            .ok_or_else(|| invalid(index, "events"))?;
        let module = Module::parse(module).ok_or_else(|| invalid(index, "events"))?;
        let ops: &[Event] = match op {
            "all" => &[Event::Create, Event::Edit, Event::Delete],
            "create" => &[Event::Create],
            "edit" => &[Event::Edit],
            "delete" => &[Event::Delete],
            _ => return Err(invalid(index, "events")),
        };
        out.extend(ops.iter().map(|e| (module, *e)));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Reads a watch item onto `base` (a new channel, or the one being updated).
fn apply(
    item: &Map<String, Json>,
    index: usize,
    mut base: Channel,
    creating: bool,
) -> Result<Channel, ApiError> {
    match item.get("events") {
        Some(v) => base.events = events(v, index)?,
        None if creating => {
            return Err(
                ApiError::bad_request("MANDATORY_NOT_FOUND", "required field not found")
                    .with_details(
                        json!({"api_name": "events", "json_path": path(index, "events")}),
                    ),
            )
        }
        None => {}
    }
    match item.get("notify_url") {
        Some(v) => {
            let url = v
                .as_str()
                .and_then(|s| reqwest::Url::parse(s).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| invalid(index, "notify_url"))?;
            base.notify_url = url.to_string();
        }
        None if creating => {
            return Err(
                ApiError::bad_request("MANDATORY_NOT_FOUND", "required field not found")
                    .with_details(
                        json!({"api_name": "notify_url", "json_path": path(index, "notify_url")}),
                    ),
            )
        }
        None => {}
    }
    match item.get("token") {
        None => {}
        Some(Json::Null) => base.token = None,
        Some(Json::String(t)) if t.chars().count() <= MAX_TOKEN_CHARS => {
            base.token = Some(t.clone())
        }
        Some(_) => {
            let mut e = invalid(index, "token");
            e.details["maximum_length"] = json!(MAX_TOKEN_CHARS);
            return Err(e);
        }
    }
    let now = now_ms();
    match item.get("channel_expiry") {
        None | Some(Json::Null) if creating => base.expiry = now + DEFAULT_EXPIRY_MS,
        None | Some(Json::Null) => {}
        Some(v) => {
            let t = v
                .as_str()
                .and_then(parse_time)
                .ok_or_else(|| invalid(index, "channel_expiry"))?;
            if t <= now || t > now + WEEK_MS + 60_000 {
                return Err(ApiError::invalid_body("channel expiry time should be within a week from now")
                    .with_details(json!({"api_name": "channel_expiry", "json_path": path(index, "channel_expiry")})));
            }
            base.expiry = t;
        }
    }
    for (key, slot) in [
        (
            "return_affected_field_values",
            &mut base.return_affected_field_values,
        ),
        (
            "notify_on_related_action",
            &mut base.notify_on_related_action,
        ),
    ] {
        match item.get(key) {
            None | Some(Json::Null) => {}
            Some(Json::Bool(b)) => *slot = *b,
            Some(_) => return Err(invalid(index, key)),
        }
    }
    Ok(base)
}

fn watch_items(body: &Bytes) -> Result<Vec<Json>, ApiError> {
    let whole: Json = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid_body("the request body is not a valid JSON"))?;
    whole
        .get("watch")
        .and_then(Json::as_array)
        .filter(|a| !a.is_empty())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("MANDATORY_NOT_FOUND", "required field not found")
                .with_details(json!({"api_name": "watch", "json_path": "$.watch"}))
        })
}

fn subscribed(c: &Channel, sb: &ZohoSandbox, message: &str) -> Json {
    let events: Vec<Json> = c
        .modules()
        .into_iter()
        .map(|m| {
            json!({
                "channel_expiry": format_time(c.expiry),
                "resource_uri": c.resource_uri(m),
                "resource_id": m.resource_id(sb.id_prefix()),
                "resource_name": m.name(),
                "channel_id": c.id,
            })
        })
        .collect();
    json!({"code": "SUCCESS", "details": {"events": events}, "message": message, "status": "success"})
}

fn answer(ok: StatusCode, outcomes: Vec<Result<Json, ApiError>>) -> Response {
    let successes = outcomes.iter().filter(|o| o.is_ok()).count();
    let status = if successes == outcomes.len() {
        ok
    } else if successes == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::MULTI_STATUS
    };
    let watch: Vec<Json> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| e.body()))
        .collect();
    (status, axum::Json(json!({ "watch": watch }))).into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Enable,
    Update,
    Patch,
}

fn change_channels(
    sb: &ZohoSandbox,
    caller: &Caller,
    items: &[Json],
    mode: Mode,
) -> Vec<Result<Json, ApiError>> {
    let mut channels = sb.channels();
    channels.purge();
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let item = item.as_object().ok_or_else(|| invalid(i, "watch"))?;
            let id = channel_id(item, i)?;
            let existing = channels.by_id.get(&id).cloned();
            let channel = match (mode, existing) {
                (Mode::Enable, _) => {
                    let fresh = Channel {
                        id: id.clone(),
                        events: Vec::new(),
                        notify_url: String::new(),
                        token: None,
                        expiry: 0,
                        return_affected_field_values: false,
                        notify_on_related_action: false,
                        api_domain: caller.api_domain.clone(),
                    };
                    apply(item, i, fresh, true)?
                }
                (_, None) => return Err(ApiError::invalid_body(
                    "the channel_id given seems to be invalid",
                )
                .with_details(
                    json!({"api_name": "channel_id", "json_path": path(i, "channel_id")}),
                )),
                (Mode::Update, Some(c)) => apply(item, i, c, false)?,
                (Mode::Patch, Some(mut c)) => {
                    let listed = events(item.get("events").unwrap_or(&Json::Null), i)?;
                    if item.get("_delete_events").and_then(Json::as_bool) == Some(true) {
                        c.events.retain(|e| !listed.contains(e));
                    } else {
                        c.events.extend(listed);
                        c.events.sort();
                        c.events.dedup();
                    }
                    c
                }
            };
            let message = if mode == Mode::Enable {
                "Successfully subscribed for actions-watch of the given module"
            } else {
                "Successfully updated the subscribe details"
            };
            let out = subscribed(&channel, sb, message);
            if channel.events.is_empty() {
                channels.by_id.remove(&id);
            } else {
                channels.by_id.insert(id, channel);
            }
            Ok(out)
        })
        .collect()
}

/// `POST /crm/v8/actions/watch`.
pub async fn enable(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require("notifications", Op::Create)?;
    let items = watch_items(&body)?;
    Ok(answer(
        StatusCode::CREATED,
        change_channels(&sb, &caller, &items, Mode::Enable),
    ))
}

/// `PUT /crm/v8/actions/watch`: updates (and so renews) channels.
pub async fn update(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require("notifications", Op::Update)?;
    let items = watch_items(&body)?;
    Ok(answer(
        StatusCode::OK,
        change_channels(&sb, &caller, &items, Mode::Update),
    ))
}

/// `PATCH /crm/v8/actions/watch`: adds events, or removes them with `_delete_events`.
pub async fn patch(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require("notifications", Op::Update)?;
    let items = watch_items(&body)?;
    Ok(answer(
        StatusCode::OK,
        change_channels(&sb, &caller, &items, Mode::Patch),
    ))
}

/// `GET /crm/v8/actions/watch[?module=&channel_id=]`: one entry per channel and module.
pub async fn list(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("notifications", Op::Read)?;
    let module = match q.get("module") {
        Some(m) => Some(Module::parse(m).ok_or_else(ApiError::invalid_module)?),
        None => None,
    };
    let mut channels = sb.channels();
    channels.purge();
    let mut watch = Vec::new();
    for c in channels.by_id.values() {
        if q.get("channel_id").is_some_and(|id| *id != c.id) {
            continue;
        }
        for m in c
            .modules()
            .into_iter()
            .filter(|m| module.is_none_or(|want| want == *m))
        {
            let events: Vec<String> = c
                .events
                .iter()
                .filter(|(em, _)| *em == m)
                .map(|(em, e)| format!("{}.{}", em.name(), e.name()))
                .collect();
            watch.push(json!({
                "notify_on_related_action": c.notify_on_related_action,
                "channel_expiry": format_time(c.expiry),
                "return_affected_field_values": c.return_affected_field_values,
                "resource_uri": c.resource_uri(m),
                "resource_id": m.resource_id(sb.id_prefix()),
                "notify_url": c.notify_url,
                "resource_name": m.name(),
                "fields": null,
                "notification_condition": null,
                "channel_id": c.id,
                "events": events,
                "token": c.token,
            }));
        }
    }
    if watch.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let count = watch.len();
    Ok(axum::Json(json!({
        "watch": watch,
        "info": {"per_page": 200, "count": count, "page": 1, "more_records": false},
    }))
    .into_response())
}

/// `DELETE /crm/v8/actions/watch?channel_ids=`.
pub async fn disable(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("notifications", Op::Delete)?;
    let ids = q
        .get("channel_ids")
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
            )
            .with_details(json!({"param_name": "channel_ids"}))
        })?;
    let mut channels = sb.channels();
    channels.purge();
    let mut outcomes = Vec::new();
    for id in ids {
        match channels.by_id.remove(&id) {
            Some(c) => outcomes.extend(c.modules().into_iter().map(|m| {
                Ok(json!({
                    "code": "SUCCESS",
                    "details": {"resource_uri": c.resource_uri(m), "resource_id": m.resource_id(sb.id_prefix()), "channel_id": c.id},
                    "message": "Successfully un-subscribed from actions-watch",
                    "status": "success",
                }))
            })),
            None => outcomes.push(Err(ApiError::invalid_body("the channel_id given seems to be invalid")
                .with_details(json!({"channel_id": id})))),
        }
    }
    Ok(answer(StatusCode::OK, outcomes))
}
