//! `POST /crm/v8/coql` `{"select_query": "..."}`: the records a query selects, with
//! `id` always among the columns and lookups (and users) as `{"id"}` only, as COQL
//! answers them; `Lookup.Field` columns come back under their dotted name. Answers
//! `{data, info: {count, more_records}}`, or 204 when nothing matches. Without ORDER
//! BY, records come in id order.

mod lexer;
mod parser;

use std::cmp::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value as Json};

use super::auth::{Caller, Op};
use super::error::ApiError;
use super::filter::{matches, order, scalar, Path};
use super::limits::coql_cost;
use super::render::column_json;
use super::schema::{Column, Kind, Module};
use super::store::{Record, Store, Value};
use super::ZohoSandbox;
use parser::{parse, Query};

fn id_only(v: Json) -> Json {
    match v.get("id") {
        Some(id) => json!({ "id": id }),
        None => v,
    }
}

fn cell(store: &Store, module: Module, record: &Record, path: Path) -> Json {
    match path {
        Path::Column(c @ (Column::Owner | Column::CreatedBy | Column::ModifiedBy)) => {
            id_only(column_json(store, module, record, c))
        }
        Path::Column(c @ Column::Field(i)) => match module.field(i).kind {
            Kind::Lookup(_) | Kind::MultiModuleLookup(_) => {
                id_only(column_json(store, module, record, c))
            }
            _ => column_json(store, module, record, c),
        },
        Path::Column(c) => column_json(store, module, record, c),
        Path::UserId(c) => column_json(store, module, record, c)
            .get("id")
            .cloned()
            .unwrap_or(Json::Null),
        Path::Through(i, target, c) => match record.value(i) {
            Some(Value::Lookup(id)) => store
                .record(target, *id)
                .map_or(Json::Null, |r| cell(store, target, r, Path::Column(c))),
            _ => Json::Null,
        },
    }
}

/// The page of matching records, and whether more match.
pub fn run(store: &Store, q: &Query) -> (Vec<Json>, bool) {
    let module = q.module;
    let mut hits: Vec<&Record> = store
        .table(module)
        .records
        .values()
        .filter(|r| {
            q.filter
                .as_ref()
                .is_none_or(|f| matches(f, store, module, r))
        })
        .collect();
    if !q.order.is_empty() {
        hits.sort_by(|a, b| {
            q.order
                .iter()
                .map(|(path, desc)| {
                    let o = order(
                        &scalar(store, module, a, *path),
                        &scalar(store, module, b, *path),
                    );
                    if *desc {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| *o != Ordering::Equal)
                .unwrap_or(Ordering::Equal)
        });
    }
    let from = q.offset.min(hits.len());
    let to = (from + q.limit).min(hits.len());
    let data = hits[from..to]
        .iter()
        .map(|r| {
            let mut row = Map::new();
            for (name, path) in &q.select {
                row.insert(name.clone(), cell(store, module, r, *path));
            }
            row.insert("id".into(), json!(r.id.to_string()));
            Json::Object(row)
        })
        .collect();
    (data, to < hits.len())
}

/// `POST /crm/v8/coql`.
pub async fn query(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require("coql", Op::Read)?;
    let body: Json = serde_json::from_slice(&body)
        .map_err(|_| ApiError::invalid_body("the request body is not a valid JSON"))?;
    let text = body
        .get("select_query")
        .and_then(Json::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("MANDATORY_NOT_FOUND", "required field not found")
                .with_details(json!({"api_name": "select_query"}))
        })?;
    let q = parse(text)?;
    caller.require_module(q.module, Op::Read)?;
    sb.limits.charge(coql_cost(q.limit) - 1)?;
    let (data, more) = run(&sb.store(), &q);
    if data.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let count = data.len();
    Ok(
        axum::Json(json!({"data": data, "info": {"count": count, "more_records": more}}))
            .into_response(),
    )
}
