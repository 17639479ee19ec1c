//! Writing records: insert (`POST /{Module}`), update (`PUT /{Module}`, ids in the
//! body, or `PUT /{Module}/{id}`), delete (`DELETE /{Module}?ids=` or
//! `/{Module}/{id}`, into the recycle bin) and upsert (`POST /{Module}/upsert`, by
//! `id`, then by `duplicate_check_fields` or Zoho's system duplicate check field).
//! At most 100 records a call; each record succeeds or fails on its own: 201/200 when
//! all succeed, 207 when some do, 400 when none do. Every change is notified, to the
//! channels watching it, in one callback per module and operation.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value as Json};

use super::auth::{Caller, Op};
use super::error::ApiError;
use super::input::{check_mandatory, check_not_cleared, parse_record, Parsed};
use super::limits::write_cost;
use super::records::{module_of, param};
use super::render::write_details;
use super::schema::{Kind, Module};
use super::store::{now_ms, Change, Operation, Store, Value, API_USER};
use super::ZohoSandbox;

const MAX_RECORDS: usize = 100;

type Outcome = Result<Json, ApiError>;

/// The `data` array of a write body, and the rest of the body.
fn records_of(body: &Bytes) -> Result<(Vec<Json>, Json), ApiError> {
    let mut whole: Json = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid_body("the request body is not a valid JSON"))?;
    let data = whole.get_mut("data").map(Json::take).ok_or_else(|| {
        ApiError::bad_request("MANDATORY_NOT_FOUND", "required field not found")
            .with_details(json!({"api_name": "data", "json_path": "$.data"}))
    })?;
    let items = match data {
        Json::Array(items) if !items.is_empty() => items,
        _ => return Err(ApiError::invalid_body("invalid data").with_details(
            json!({"api_name": "data", "json_path": "$.data", "expected_data_type": "jsonarray"}),
        )),
    };
    if items.len() > MAX_RECORDS {
        return Err(
            ApiError::bad_request("LIMIT_EXCEEDED", "limit exceeded").with_details(
                json!({"limit": MAX_RECORDS, "api_name": "data", "json_path": "$.data"}),
            ),
        );
    }
    Ok((items, whole))
}

fn object(item: &Json, index: usize) -> Result<&Map<String, Json>, ApiError> {
    item.as_object().ok_or_else(|| {
        ApiError::invalid_body("invalid data").with_details(json!({
            "json_path": format!("$.data[{index}]"),
            "expected_data_type": "jsonobject",
        }))
    })
}

fn success(message: &str, details: Json) -> Json {
    json!({"code": "SUCCESS", "details": details, "message": message, "status": "success"})
}

/// The bulk answer: `ok` when every record succeeded, 207 when some did, 400 when
/// none did.
fn bulk(ok: StatusCode, outcomes: Vec<Outcome>) -> Response {
    let successes = outcomes.iter().filter(|o| o.is_ok()).count();
    let status = if successes == outcomes.len() {
        ok
    } else if successes == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::MULTI_STATUS
    };
    let data: Vec<Json> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|e| e.body()))
        .collect();
    (status, axum::Json(json!({ "data": data }))).into_response()
}

fn record_id(v: Option<&Json>, index: usize) -> Result<u64, ApiError> {
    let v = v.ok_or_else(|| ApiError::mandatory_missing(index, "id"))?;
    super::input::lookup_id(v).ok_or_else(|| ApiError::invalid_field(index, "id", Some("bigint")))
}

fn invalid_id(id: u64) -> ApiError {
    ApiError::invalid_body("the id given seems to be invalid")
        .with_details(json!({"id": id.to_string()}))
}

fn values_of(module: Module, parsed: &Parsed) -> Vec<Option<Value>> {
    let mut values = vec![None; module.fields().len()];
    for (i, v) in &parsed.set {
        values[*i] = v.clone();
    }
    values
}

fn do_insert(
    store: &mut Store,
    module: Module,
    parsed: &Parsed,
    index: usize,
    at: i64,
    changes: &mut Vec<Change>,
) -> Result<Json, ApiError> {
    let values = values_of(module, parsed);
    check_mandatory(module, &values, index)?;
    let user = store.user_id(API_USER);
    let id = store.insert(module, values, parsed.owner.unwrap_or(user), user, at);
    changes.push(Change {
        module,
        operation: Operation::Insert,
        id,
        fields: Vec::new(),
    });
    let record = store.record(module, id).ok_or_else(|| invalid_id(id))?;
    Ok(write_details(store, record))
}

fn do_update(
    store: &mut Store,
    module: Module,
    id: u64,
    parsed: &Parsed,
    index: usize,
    at: i64,
    changes: &mut Vec<Change>,
) -> Result<Json, ApiError> {
    check_not_cleared(module, parsed, index)?;
    let user = store.user_id(API_USER);
    let fields = store
        .update(module, id, &parsed.set, parsed.owner, user, at)
        .ok_or_else(|| invalid_id(id))?;
    changes.push(Change {
        module,
        operation: Operation::Update,
        id,
        fields,
    });
    let record = store.record(module, id).ok_or_else(|| invalid_id(id))?;
    Ok(write_details(store, record))
}

/// `POST /crm/v8/{Module}`.
pub async fn insert(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Create)?;
    let (items, _) = records_of(&body)?;
    sb.limits.charge(write_cost(items.len()) - 1)?;
    let at = now_ms();
    let mut changes = Vec::new();
    let outcomes: Vec<Outcome> = {
        let mut store = sb.store_mut();
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let parsed = parse_record(&store, module, object(item, i)?, i)?;
                do_insert(&mut store, module, &parsed, i, at, &mut changes)
                    .map(|d| success("record added", d))
            })
            .collect()
    };
    sb.notify(changes);
    Ok(bulk(StatusCode::CREATED, outcomes))
}

fn update_items(
    sb: &ZohoSandbox,
    module: Module,
    items: &[Json],
    path_id: Option<u64>,
) -> Vec<Outcome> {
    let at = now_ms();
    let mut changes = Vec::new();
    let outcomes = {
        let mut store = sb.store_mut();
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let obj = object(item, i)?;
                let id = match path_id {
                    Some(id) => id,
                    None => record_id(obj.get("id"), i)?,
                };
                if store.record(module, id).is_none() {
                    return Err(invalid_id(id));
                }
                let parsed = parse_record(&store, module, obj, i)?;
                do_update(&mut store, module, id, &parsed, i, at, &mut changes)
                    .map(|d| success("record updated", d))
            })
            .collect()
    };
    sb.notify(changes);
    outcomes
}

/// `PUT /crm/v8/{Module}`.
pub async fn update_many(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Update)?;
    let (items, _) = records_of(&body)?;
    sb.limits.charge(write_cost(items.len()) - 1)?;
    Ok(bulk(
        StatusCode::OK,
        update_items(&sb, module, &items, None),
    ))
}

/// `PUT /crm/v8/{Module}/{id}`.
pub async fn update_one(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Update)?;
    let id: u64 = id.parse().map_err(|_| ApiError::invalid_url())?;
    let (items, _) = records_of(&body)?;
    let items = &items[..1];
    Ok(bulk(
        StatusCode::OK,
        update_items(&sb, module, items, Some(id)),
    ))
}

fn delete_ids(sb: &ZohoSandbox, module: Module, ids: &[&str]) -> Vec<Outcome> {
    let at = now_ms();
    let mut changes = Vec::new();
    let outcomes = {
        let mut store = sb.store_mut();
        let user = store.user_id(API_USER);
        ids.iter()
            .map(|raw| {
                let not_deleted = || {
                    ApiError::invalid_body("record not deleted").with_details(json!({"id": raw}))
                };
                let id: u64 = raw.parse().map_err(|_| not_deleted())?;
                if !store.delete(module, id, user, at) {
                    return Err(not_deleted());
                }
                changes.push(Change {
                    module,
                    operation: Operation::Delete,
                    id,
                    fields: Vec::new(),
                });
                Ok(success("record deleted", json!({"id": id.to_string()})))
            })
            .collect()
    };
    sb.notify(changes);
    outcomes
}

/// `DELETE /crm/v8/{Module}?ids=`.
pub async fn delete_many(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Delete)?;
    let raw = param(&q, "ids").ok_or_else(|| {
        ApiError::bad_request(
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
        )
        .with_details(json!({"param_name": "ids"}))
    })?;
    let ids: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > MAX_RECORDS {
        return Err(ApiError::bad_request("LIMIT_EXCEEDED", "limit exceeded")
            .with_details(json!({"limit": MAX_RECORDS, "param_name": "ids"})));
    }
    sb.limits.charge(write_cost(ids.len()) - 1)?;
    Ok(bulk(StatusCode::OK, delete_ids(&sb, module, &ids)))
}

/// `DELETE /crm/v8/{Module}/{id}`.
pub async fn delete_one(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module, id)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Delete)?;
    Ok(bulk(
        StatusCode::OK,
        delete_ids(&sb, module, &[id.as_str()]),
    ))
}

fn duplicate_fields(module: Module, body: &Json) -> Result<Vec<usize>, ApiError> {
    let bad = || {
        ApiError::invalid_body("invalid data").with_details(json!({
            "api_name": "duplicate_check_fields",
            "json_path": "$.duplicate_check_fields",
        }))
    };
    let names: Vec<&str> = match body.get("duplicate_check_fields") {
        None | Some(Json::Null) => module.default_duplicate_check().to_vec(),
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    names
        .into_iter()
        .map(|n| {
            let i = module.field_index(n).ok_or_else(bad)?;
            match module.field(i).kind {
                Kind::Text | Kind::Email | Kind::Phone | Kind::Integer | Kind::Currency => Ok(i),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The first live record with the same value in a duplicate check field.
fn find_duplicate(
    store: &Store,
    module: Module,
    parsed: &Parsed,
    fields: &[usize],
) -> Option<(u64, usize)> {
    for &f in fields {
        let Some((_, Some(wanted))) = parsed.set.iter().find(|(i, _)| *i == f) else {
            continue;
        };
        let same = |v: &Value| match (v, wanted) {
            (Value::Text(a), Value::Text(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        };
        if let Some(r) = store
            .table(module)
            .records
            .values()
            .find(|r| r.value(f).is_some_and(same))
        {
            return Some((r.id, f));
        }
    }
    None
}

/// `POST /crm/v8/{Module}/upsert`.
pub async fn upsert(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Create)?;
    caller.require_module(module, Op::Update)?;
    let (items, whole) = records_of(&body)?;
    let dup_fields = duplicate_fields(module, &whole)?;
    sb.limits.charge(write_cost(items.len()) - 1)?;
    let at = now_ms();
    let mut changes = Vec::new();
    let outcomes: Vec<Outcome> = {
        let mut store = sb.store_mut();
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let obj = object(item, i)?;
                let parsed = parse_record(&store, module, obj, i)?;
                let by_id = match obj.get("id") {
                    Some(v) => {
                        let id = record_id(Some(v), i)?;
                        store
                            .record(module, id)
                            .map(|_| id)
                            .ok_or_else(|| invalid_id(id))
                            .map(Some)?
                    }
                    None => None,
                };
                let existing = match by_id {
                    Some(id) => Some((id, None)),
                    None => find_duplicate(&store, module, &parsed, &dup_fields)
                        .map(|(id, f)| (id, Some(f))),
                };
                let (action, message, duplicate, details) = match existing {
                    Some((id, field)) => (
                        "update",
                        "record updated",
                        field.map(|f| module.field(f).name),
                        do_update(&mut store, module, id, &parsed, i, at, &mut changes)?,
                    ),
                    None => (
                        "insert",
                        "record added",
                        None,
                        do_insert(&mut store, module, &parsed, i, at, &mut changes)?,
                    ),
                };
                Ok(json!({
                    "code": "SUCCESS",
                    "duplicate_field": duplicate,
                    "action": action,
                    "details": details,
                    "message": message,
                    "status": "success",
                }))
            })
            .collect()
    };
    sb.notify(changes);
    Ok(bulk(StatusCode::OK, outcomes))
}
