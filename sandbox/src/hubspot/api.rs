//! The CRM API: objects v3 (list, get, create, update, archive, batch read, create,
//! update, upsert and archive, search, merge) and associations v4.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::search::{self, SearchRequest, MAX_RESULTS};
use super::store::{
    association_target, association_type_id, canonical_type, default_properties, now_ms, Store,
    StoreError,
};
use super::{oauth, HubSpotSandbox};

type Hs = State<Arc<HubSpotSandbox>>;

/// HubSpot's error body.
pub fn error(status: StatusCode, category: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "status": "error",
        "message": message.into(),
        "correlationId": uuid::Uuid::new_v4().to_string(),
        "category": category,
    });
    (status, Json(body)).into_response()
}

fn not_found(message: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", message)
}

fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound(m) => not_found(m),
        StoreError::Conflict(m) => error(StatusCode::CONFLICT, "CONFLICT", m),
        StoreError::Invalid(m) => invalid(m),
    }
}

/// Bearer authentication and rate limits for every CRM call; the limit headers go on
/// every answer that passed.
pub async fn guard(State(hs): Hs, request: Request, next: Next) -> Response {
    let auth = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(refused) = oauth::check_bearer(&hs, auth.as_deref()) {
        return refused;
    }
    let search = request.uri().path().ends_with("/search");
    match hs.limits.admit(search) {
        Err(limited) => limited,
        Ok(headers) => {
            let mut response = next.run(request).await;
            response.headers_mut().extend(headers);
            response
        }
    }
}

fn object_type(name: &str) -> Result<&'static str, Response> {
    canonical_type(name).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!("Unable to infer object type from: {name}"),
        )
    })
}

fn parse_id(id: &str) -> Result<u64, Response> {
    id.parse().map_err(|_| {
        not_found(format!(
            "Object not found.  objectId are usually numeric.  {id}"
        ))
    })
}

fn list_param(s: Option<&String>) -> Vec<String> {
    s.map(|p| {
        p.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn wanted(object_type: &str, asked: Vec<String>) -> Vec<String> {
    if asked.is_empty() {
        default_properties(object_type)
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        asked
    }
}

fn props_of(v: &Value) -> Result<BTreeMap<String, String>, Response> {
    let Some(map) = v.get("properties").and_then(Value::as_object) else {
        return Err(invalid("properties is required"));
    };
    map.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if s.len() > 65_536 {
                return Err(invalid(format!(
                    "Property values must be 65536 characters or fewer: {k}"
                )));
            }
            Ok((k.clone(), s))
        })
        .collect()
}

fn with_associations(
    hs: &HubSpotSandbox,
    object_type: &str,
    id: u64,
    to_types: &[String],
    mut v: Value,
) -> Value {
    if to_types.is_empty() {
        return v;
    }
    let store = hs.store.lock().expect("store lock");
    let mut assoc = serde_json::Map::new();
    for to in to_types {
        let Some(to_type) = canonical_type(to) else {
            continue;
        };
        let results: Vec<Value> = store
            .associated(object_type, id, to_type)
            .into_iter()
            .map(|to_id| json!({"id": to_id.to_string(), "type": format!("{}_to_{}", super::store::singular(object_type), super::store::singular(to_type))}))
            .collect();
        assoc.insert(to_type.to_owned(), json!({"results": results}));
    }
    v["associations"] = Value::Object(assoc);
    v
}

pub async fn list(
    State(hs): Hs,
    Path(ty): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let limit: usize = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return invalid("limit must be a number from 1 to 100"),
    };
    let after: u64 = match q.get("after").map(|a| a.parse::<u64>()) {
        None => 0,
        Some(Ok(a)) => a,
        Some(Err(_)) => return invalid("after must be a paging cursor from a previous page"),
    };
    let archived = q.get("archived").is_some_and(|a| a == "true");
    let properties = wanted(ty, list_param(q.get("properties")));
    let assoc = list_param(q.get("associations"));
    let (page, next): (Vec<Value>, Option<u64>) = {
        let store = hs.store.lock().expect("store lock");
        let mut rows = store.objects[ty]
            .range(after..)
            .filter(|(_, r)| r.merged_into.is_none() && r.archived_at.is_some() == archived);
        let page: Vec<_> = rows
            .by_ref()
            .take(limit)
            .map(|(_, r)| (r.id, r.to_json(ty, &properties)))
            .collect();
        let next = rows.next().map(|(id, _)| *id);
        (page.into_iter().map(|(_, v)| v).collect(), next)
    };
    let results: Vec<Value> = page
        .into_iter()
        .map(|v| {
            let id = v["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            with_associations(&hs, ty, id, &assoc, v)
        })
        .collect();
    let mut body = json!({"results": results});
    if let Some(next) = next {
        body["paging"] =
            json!({"next": {"after": next.to_string(), "link": format!("?after={next}")}});
    }
    Json(body).into_response()
}

pub async fn get(
    State(hs): Hs,
    Path((ty, id)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let properties = wanted(ty, list_param(q.get("properties")));
    let archived = q.get("archived").is_some_and(|a| a == "true");
    let found = {
        let store = hs.store.lock().expect("store lock");
        match q.get("idProperty") {
            Some(prop) => store.find_by(ty, prop, &id).cloned(),
            None => match id.parse::<u64>() {
                Ok(n) => store.resolve(ty, n).cloned(),
                Err(_) => None,
            },
        }
    };
    match found {
        Some(r) if r.archived_at.is_none() || archived => {
            let v = r.to_json(ty, &properties);
            Json(with_associations(
                &hs,
                ty,
                r.id,
                &list_param(q.get("associations")),
                v,
            ))
            .into_response()
        }
        _ => not_found(format!(
            "Object not found.  objectId are usually numeric.  {id}"
        )),
    }
}

/// The links a create asks for, each checked (a known type id from `ty`, a target
/// that exists) before anything is written: `(target type, target id)`.
fn requested_links(
    store: &Store,
    ty: &'static str,
    input: &Value,
) -> Result<Vec<(&'static str, u64)>, Response> {
    let list = match input.get("associations") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("associations must be an array")),
    };
    let malformed = || invalid("associations need to.id and types[].associationTypeId");
    let mut links = Vec::with_capacity(list.len());
    for a in list {
        let to = match a.pointer("/to/id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(malformed()),
        };
        let types = a
            .get("types")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or_else(malformed)?;
        let mut to_type = None;
        for t in types {
            let type_id = t
                .get("associationTypeId")
                .and_then(Value::as_u64)
                .ok_or_else(malformed)?;
            let target = association_target(ty, type_id).ok_or_else(|| {
                invalid(format!(
                    "associationTypeId {type_id} is not a valid association type from {ty}"
                ))
            })?;
            if to_type.is_some_and(|t| t != target) {
                return Err(invalid(
                    "the types of one association must all point to one object type",
                ));
            }
            to_type = Some(target);
        }
        let to_type = to_type.ok_or_else(malformed)?;
        let to_id: u64 = to.parse().map_err(|_| invalid("to.id must be numeric"))?;
        let target = store
            .live(to_type, to_id)
            .ok_or_else(|| invalid(format!("{to_type} {to_id} does not exist")))?;
        links.push((to_type, target.id));
    }
    Ok(links)
}

/// Creates one record and its links, or nothing: every check runs first.
fn create_one(hs: &HubSpotSandbox, ty: &'static str, input: &Value) -> Result<Value, Response> {
    let props = props_of(input)?;
    let at = now_ms();
    let mut store = hs.store.lock().expect("store lock");
    if ty == "contacts" {
        if let Some(email) = props.get("email").filter(|e| !e.is_empty()) {
            if let Some(existing) = store.find_by(ty, "email", email) {
                return Err(error(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    format!("Contact already exists. Existing ID: {}", existing.id),
                ));
            }
        }
    }
    let links = requested_links(&store, ty, input)?;
    let (id, mut changes) = store.create(ty, props, at);
    for (to_type, to) in links {
        changes.extend(store.associate(ty, id, to_type, to));
    }
    let record = store.objects[ty][&id].clone();
    drop(store);
    hs.webhooks.emit(&changes, at);
    let all: Vec<String> = record.properties.keys().cloned().collect();
    Ok(record.to_json(ty, &all))
}

pub async fn create(State(hs): Hs, Path(ty): Path<String>, Json(body): Json<Value>) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match create_one(&hs, ty, &body) {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(r) => r,
    }
}

pub async fn update(
    State(hs): Hs,
    Path((ty, id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let id = match parse_id(&id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let props = match props_of(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    hs.update(ty, id, &props)
        .map_or_else(store_error, |v| Json(v).into_response())
}

pub async fn archive(State(hs): Hs, Path((ty, id)): Path<(String, String)>) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Ok(id) = id.parse() {
        hs.archive(ty, id);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchBody {
    #[serde(default)]
    inputs: Vec<Value>,
    #[serde(default)]
    properties: Vec<String>,
    #[serde(default)]
    id_property: Option<String>,
}

fn batch_answer(results: Vec<Value>, errors: Vec<Value>) -> Response {
    let now = super::store::iso(now_ms());
    let mut body =
        json!({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now});
    if errors.is_empty() {
        return Json(body).into_response();
    }
    body["numErrors"] = json!(errors.len());
    body["errors"] = json!(errors);
    (StatusCode::MULTI_STATUS, Json(body)).into_response()
}

fn input_id(v: &Value) -> String {
    match v.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

pub async fn batch(
    State(hs): Hs,
    Path((ty, action)): Path<(String, String)>,
    Json(body): Json<BatchBody>,
) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if body.inputs.len() > 100 {
        return invalid("Batch inputs may hold at most 100 items");
    }
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let missing = |ids: Vec<String>| json!({"status": "error", "category": "OBJECT_NOT_FOUND", "message": "Could not get some objects, they may be deleted or not exist.", "context": {"ids": ids}});
    match action.as_str() {
        "read" => {
            let properties = wanted(ty, body.properties);
            let store = hs.store.lock().expect("store lock");
            let mut not_found = Vec::new();
            for input in &body.inputs {
                let id = input_id(input);
                let found = match &body.id_property {
                    Some(p) => store.find_by(ty, p, &id),
                    None => id.parse().ok().and_then(|n| store.live(ty, n)),
                };
                match found {
                    Some(r) => results.push(r.to_json(ty, &properties)),
                    None => not_found.push(id),
                }
            }
            if !not_found.is_empty() {
                errors.push(missing(not_found));
            }
        }
        "create" => {
            for input in &body.inputs {
                match create_one(&hs, ty, input) {
                    Ok(v) => results.push(v),
                    Err(_) => errors.push(json!({"status": "error", "category": "VALIDATION_ERROR", "message": "could not create", "context": {}})),
                }
            }
        }
        "update" | "upsert" => {
            let mut not_found = Vec::new();
            for input in &body.inputs {
                let Ok(props) = props_of(input) else {
                    return invalid("every input needs properties");
                };
                let id = input_id(input);
                let id_property = input.get("idProperty").and_then(Value::as_str);
                let existing = {
                    let store = hs.store.lock().expect("store lock");
                    match id_property {
                        Some(p) => store.find_by(ty, p, &id).map(|r| r.id),
                        None => id
                            .parse()
                            .ok()
                            .and_then(|n| store.live(ty, n))
                            .map(|r| r.id),
                    }
                };
                match (existing, action.as_str()) {
                    (Some(n), _) => match hs.update(ty, n, &props) {
                        Ok(mut v) => {
                            v["new"] = json!(false);
                            results.push(v);
                        }
                        Err(_) => not_found.push(id),
                    },
                    (None, "upsert") => {
                        let mut props = props.clone();
                        if let Some(p) = id_property {
                            props.insert(p.to_owned(), id.clone());
                        }
                        let input = json!({"properties": props});
                        match create_one(&hs, ty, &input) {
                            Ok(mut v) => {
                                v["new"] = json!(true);
                                results.push(v);
                            }
                            Err(r) => return r,
                        }
                    }
                    (None, _) => not_found.push(id),
                }
            }
            if !not_found.is_empty() {
                errors.push(missing(not_found));
            }
        }
        "archive" => {
            for input in &body.inputs {
                if let Ok(n) = input_id(input).parse() {
                    hs.archive(ty, n);
                }
            }
            return StatusCode::NO_CONTENT.into_response();
        }
        other => return not_found(format!("Unknown batch action {other}")),
    }
    batch_answer(results, errors)
}

pub async fn search(
    State(hs): Hs,
    Path(ty): Path<String>,
    Json(req): Json<SearchRequest>,
) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Err(m) = search::validate(&req) {
        return invalid(m);
    }
    let offset = match search::offset(&req) {
        Ok(o) => o,
        Err(m) => return invalid(m),
    };
    let limit = req.limit.unwrap_or(10).max(1);
    let past_cap = || {
        error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            format!("There was a problem with the request. Paging through search results is limited to {MAX_RESULTS} results: after {offset} + limit {limit} is past it"),
        )
    };
    if offset >= MAX_RESULTS {
        return past_cap();
    }
    let end = match offset.checked_add(limit) {
        Some(end) if end <= MAX_RESULTS => end,
        _ => return past_cap(),
    };
    let properties = wanted(ty, req.properties.clone());
    let now = now_ms();
    let store = hs.store.lock().expect("store lock");
    let mut rows: Vec<(u64, &BTreeMap<String, String>)> = store.objects[ty]
        .values()
        .filter(|r| r.merged_into.is_none())
        .filter_map(|r| {
            r.indexed(now)
                .filter(|(_, archived)| !archived)
                .map(|(p, _)| (r.id, p))
        })
        .filter(|(_, p)| search::select(&req, p))
        .collect();
    search::sort(&req, &mut rows);
    let total = rows.len();
    let results: Vec<Value> = rows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(id, props)| {
            let r = &store.objects[ty][id];
            let mut props_json = serde_json::Map::new();
            let always = ["hs_object_id", "createdate", super::store::modified_property(ty)];
            for name in properties.iter().map(String::as_str).chain(always) {
                props_json.insert(name.to_owned(), props.get(name).cloned().map_or(Value::Null, Value::String));
            }
            json!({"id": id.to_string(), "properties": props_json, "createdAt": super::store::iso(r.created_at), "updatedAt": props.get(super::store::modified_property(ty)).cloned().unwrap_or_default(), "archived": false})
        })
        .collect();
    let mut body = json!({"total": total, "results": results});
    if end < total {
        body["paging"] = json!({"next": {"after": end.to_string(), "link": ""}});
    }
    Json(body).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeBody {
    primary_object_id: Value,
    object_id_to_merge: Value,
}

pub async fn merge(State(hs): Hs, Path(ty): Path<String>, Json(body): Json<MergeBody>) -> Response {
    let ty = match object_type(&ty) {
        Ok(t) if matches!(t, "contacts" | "companies" | "deals") => t,
        Ok(t) => return invalid(format!("{t} cannot be merged")),
        Err(r) => return r,
    };
    let id = |v: &Value| match v {
        Value::String(s) => s.parse().ok(),
        other => other.as_u64(),
    };
    let (Some(primary), Some(merged)) = (id(&body.primary_object_id), id(&body.object_id_to_merge))
    else {
        return invalid("primaryObjectId and objectIdToMerge must be ids");
    };
    match hs.merge(ty, primary, merged) {
        Ok(v) => Json(v).into_response(),
        Err(e) => store_error(e),
    }
}

fn assoc_json(from: &str, to: &str, ids: Vec<u64>) -> Vec<Value> {
    let Some(type_id) = association_type_id(from, to) else {
        return Vec::new();
    };
    ids.into_iter()
        .map(|id| json!({"toObjectId": id, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id, "label": null}]}))
        .collect()
}

pub async fn associations(
    State(hs): Hs,
    Path((ty, id, to)): Path<(String, String, String)>,
) -> Response {
    let (ty, to) = match (object_type(&ty), object_type(&to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let id = match parse_id(&id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let ids = hs.store.lock().expect("store lock").associated(ty, id, to);
    Json(json!({"results": assoc_json(ty, to, ids)})).into_response()
}

pub async fn associations_batch(
    State(hs): Hs,
    Path((from, to)): Path<(String, String)>,
    Json(body): Json<BatchBody>,
) -> Response {
    let (from, to) = match (object_type(&from), object_type(&to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if body.inputs.len() > 1000 {
        return invalid("at most 1000 inputs");
    }
    let store = hs.store.lock().expect("store lock");
    let results: Vec<Value> = body
        .inputs
        .iter()
        .filter_map(|i| input_id(i).parse::<u64>().ok())
        .map(|id| json!({"from": {"id": id.to_string()}, "to": assoc_json(from, to, store.associated(from, id, to))}))
        .collect();
    batch_answer(results, Vec::new())
}

pub async fn associate_default(
    State(hs): Hs,
    Path((from, from_id, to, to_id)): Path<(String, String, String, String)>,
) -> Response {
    let (from, to) = match (object_type(&from), object_type(&to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let Some(type_id) = association_type_id(from, to) else {
        return invalid(format!("{from} cannot be associated with {to}"));
    };
    let (Ok(a), Ok(b)) = (from_id.parse::<u64>(), to_id.parse::<u64>()) else {
        return invalid("ids must be numeric");
    };
    let (changes, a, b) = {
        let mut store = hs.store.lock().expect("store lock");
        let (Some(a), Some(b)) = (
            store.live(from, a).map(|r| r.id),
            store.live(to, b).map(|r| r.id),
        ) else {
            return not_found("Object not found");
        };
        (store.associate(from, a, to, b), a, b)
    };
    hs.webhooks.emit(&changes, now_ms());
    Json(json!({"status": "COMPLETE", "results": [{"from": {"id": a.to_string()}, "to": {"id": b.to_string()}, "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}}]})).into_response()
}
