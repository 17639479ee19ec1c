//! Reading records: `GET /crm/v8/{Module}` (list), `/{Module}/{id}` and
//! `/{Module}/deleted`. `fields` is required on lists (≤ 50; an unknown API name is
//! refused), `per_page` is 1–200, sorting is by `id`, `Created_Time` or
//! `Modified_Time` (default `id` descending, as Zoho), `If-Modified-Since` (ISO 8601
//! as Zoho documents, or an HTTP date) keeps records modified after it, `ids` (≤ 100)
//! keeps those records (how a client fetches what a notification named); no records
//! is 204 with an empty body. A record id that is not live is 204 as well.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::DateTime;
use serde_json::{json, Value as Json};

use super::auth::{Caller, Op};
use super::error::ApiError;
use super::paging::{position_after, sorted_keys, Cursor, SortBy, DISCRETE_LIMIT, TOKEN_LIMIT};
use super::render::{record_json, user_ref};
use super::schema::{Column, Module};
use super::store::{format_time, Record};
use super::ZohoSandbox;

pub type Params = Query<HashMap<String, String>>;

pub fn module_of(name: &str) -> Result<Module, ApiError> {
    Module::parse(name).ok_or_else(ApiError::invalid_module)
}

pub fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// The columns a `fields` parameter names.
pub fn columns(module: Module, raw: &str) -> Result<Vec<Column>, ApiError> {
    let names: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.len() > 50 {
        return Err(ApiError::bad_request("LIMIT_EXCEEDED", "limit exceeded")
            .with_details(json!({"limit": 50, "param_name": "fields"})));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let column = module.column(name).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_DATA",
                "the field api name given seems to be invalid",
            )
            .with_details(json!({"param_name": "fields", "api_name": name}))
        })?;
        if column != Column::Id && !out.contains(&column) {
            out.push(column);
        }
    }
    Ok(out)
}

pub fn per_page(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match param(q, "per_page") {
        None => Ok(200),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| ApiError::invalid_param("per_page", "per_page must be from 1 to 200")),
    }
}

pub fn page(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match param(q, "page") {
        None => Ok(1),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::invalid_param("page", "invalid page")),
    }
}

/// The `If-Modified-Since` header, in milliseconds.
pub fn if_modified_since(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(raw) = headers.get("if-modified-since") else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or_default().trim();
    DateTime::parse_from_rfc3339(raw)
        .or_else(|_| DateTime::parse_from_rfc2822(raw))
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::invalid_param("If-Modified-Since", "invalid If-Modified-Since header")
        })
}

fn sort(q: &HashMap<String, String>) -> Result<(Option<SortBy>, Option<bool>), ApiError> {
    let sort_by = param(q, "sort_by")
        .map(|s| {
            SortBy::parse(s).ok_or_else(|| {
                ApiError::invalid_param("sort_by", "invalid data").with_details(json!({
                    "param_name": "sort_by",
                    "supported_values": ["id", "Created_Time", "Modified_Time"],
                }))
            })
        })
        .transpose()?;
    let desc = param(q, "sort_order")
        .map(|s| match s {
            "asc" => Ok(false),
            "desc" => Ok(true),
            _ => Err(
                ApiError::invalid_param("sort_order", "invalid data").with_details(
                    json!({"param_name": "sort_order", "supported_values": ["asc", "desc"]}),
                ),
            ),
        })
        .transpose()?;
    Ok((sort_by, desc))
}

/// The `ids` a list is limited to (at most 100), without repeats.
fn ids(q: &HashMap<String, String>) -> Result<Option<Vec<u64>>, ApiError> {
    let Some(raw) = param(q, "ids") else {
        return Ok(None);
    };
    let mut ids = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::invalid_param("ids", "invalid data"))?;
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > 100 {
        return Err(ApiError::bad_request("LIMIT_EXCEEDED", "limit exceeded")
            .with_details(json!({"limit": 100, "param_name": "ids"})));
    }
    Ok(Some(ids))
}

fn token_mismatch() -> ApiError {
    ApiError::bad_request(
        "TOKEN_BOUND_DATA_MISMATCH",
        "The page_token given seems to be invalid or input param is added or altered or deleted",
    )
    .with_details(json!({"param_name": "page_token"}))
}

enum Start {
    Offset(usize),
    After((i64, u64), usize),
}

/// `GET /crm/v8/{Module}`.
pub async fn list(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Read)?;
    let fields = param(&q, "fields").ok_or_else(|| ApiError::required_param("fields"))?;
    let cols = columns(module, fields)?;
    let per_page = per_page(&q)?;
    let (sort_by, desc) = sort(&q)?;
    let since = if_modified_since(&headers)?;
    let token = param(&q, "page_token");
    if token.is_some() && param(&q, "page").is_some() {
        return Err(ApiError::bad_request(
            "AMBIGUITY_DURING_PROCESSING",
            "You cannot use both page and page_token",
        )
        .with_details(
            json!({"ambiguity_due_to": [{"param_name": "page"}, {"param_name": "page_token"}]}),
        ));
    }
    let only = ids(&q)?;
    let (start, sort_by, desc, since, only) = match token {
        Some(token) => {
            let cursor = sb.pages().get(token).cloned().ok_or_else(token_mismatch)?;
            if cursor.expires <= super::store::now_ms() {
                return Err(ApiError::bad_request("EXPIRED_VALUE", "Page token expired")
                    .with_details(
                        json!({"api_name": "page_token", "json_path": "$.query.page_token"}),
                    ));
            }
            let altered = cursor.module != module
                || cursor.fields != fields
                || sort_by.is_some_and(|s| s != cursor.sort_by)
                || desc.is_some_and(|d| d != cursor.desc)
                || since.is_some_and(|s| Some(s) != cursor.since)
                || only
                    .as_ref()
                    .is_some_and(|o| Some(o) != cursor.ids.as_ref());
            if altered {
                return Err(token_mismatch());
            }
            if cursor.served >= TOKEN_LIMIT {
                return Err(ApiError::bad_request(
                    "PAGINATION_LIMIT_EXCEEDED",
                    "You can only get upto 100000 records using page_token param",
                )
                .with_details(json!({"param_name": "page_token"})));
            }
            (
                Start::After(cursor.after, cursor.served),
                cursor.sort_by,
                cursor.desc,
                cursor.since,
                cursor.ids,
            )
        }
        None => {
            let page = page(&q)?;
            if page.saturating_mul(per_page) > DISCRETE_LIMIT {
                return Err(ApiError::bad_request(
                    "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
                    "You can only get the first 2000 records without using page_token param",
                )
                .with_details(json!({"limit": DISCRETE_LIMIT})));
            }
            (
                Start::Offset((page - 1) * per_page),
                sort_by.unwrap_or(SortBy::Id),
                desc.unwrap_or(true),
                since,
                only,
            )
        }
    };

    let (data, served_before, last_key, more) = {
        let store = sb.store();
        let records = &store.table(module).records;
        let candidates: Box<dyn Iterator<Item = &Record>> = match &only {
            Some(ids) => Box::new(ids.iter().filter_map(|id| records.get(id))),
            None => Box::new(records.values()),
        };
        let keys = sorted_keys(
            candidates.filter(|r| since.is_none_or(|s| r.modified > s)),
            sort_by,
            desc,
        );
        let (from, served_before) = match start {
            Start::Offset(o) => (o, o),
            Start::After(after, served) => (position_after(&keys, after, desc), served),
        };
        let from = from.min(keys.len());
        let room = TOKEN_LIMIT.saturating_sub(served_before).max(1);
        let to = (from + per_page.min(room)).min(keys.len());
        let data: Vec<Json> = keys[from..to]
            .iter()
            .filter_map(|(_, id)| records.get(id))
            .map(|r| record_json(&store, module, r, &cols))
            .collect();
        (
            data,
            served_before,
            keys[from..to].last().copied(),
            to < keys.len(),
        )
    };
    let Some(last_key) = last_key else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let count = data.len();
    let (next, expiry) = if more {
        let (t, e) = sb.pages().issue(Cursor {
            module,
            fields: fields.to_owned(),
            sort_by,
            desc,
            since,
            ids: only,
            after: last_key,
            served: served_before + count,
            expires: 0,
        });
        (Some(t), Some(format_time(e)))
    } else {
        (None, None)
    };
    Ok(axum::Json(json!({
        "data": data,
        "info": {
            "call": false,
            "per_page": per_page,
            "next_page_token": next,
            "count": count,
            "sort_by": sort_by.name(),
            "page": served_before / per_page + 1,
            "page_token_expiry": expiry,
            "sort_order": if desc { "desc" } else { "asc" },
            "email": false,
            "more_records": more,
            "previous_page_token": null,
        }
    }))
    .into_response())
}

/// `GET /crm/v8/{Module}/{id}`: every field unless `fields` names some.
pub async fn get_one(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module, id)): Path<(String, String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Read)?;
    let cols = match param(&q, "fields") {
        Some(f) => columns(module, f)?,
        None => module.all_columns(),
    };
    let store = sb.store();
    let record = id.parse().ok().and_then(|id| store.record(module, id));
    Ok(match record {
        Some(r) => {
            axum::Json(json!({"data": [record_json(&store, module, r, &cols)]})).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `GET /crm/v8/{Module}/deleted?type=all|recycle|permanent`, newest first.
pub async fn deleted(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Read)?;
    let kind = param(&q, "type").unwrap_or("all");
    if !matches!(kind, "all" | "recycle" | "permanent") {
        return Err(ApiError::bad_request(
            "PATTERN_NOT_MATCHED",
            "Please check whether the input values are correct",
        )
        .with_details(json!({"param_name": "type"})));
    }
    let per_page = per_page(&q)?;
    let page = page(&q)?;
    let since = if_modified_since(&headers)?;
    let store = sb.store();
    let mut rows: Vec<_> = store
        .table(module)
        .deleted
        .iter()
        .filter(|d| match kind {
            "recycle" => !d.permanent,
            "permanent" => d.permanent,
            _ => true,
        })
        .filter(|d| since.is_none_or(|s| d.deleted_time > s))
        .collect();
    rows.sort_by(|a, b| b.deleted_time.cmp(&a.deleted_time).then(b.id.cmp(&a.id)));
    let from = (page - 1)
        .checked_mul(per_page)
        .map_or(rows.len(), |from| from.min(rows.len()));
    let to = (from + per_page).min(rows.len());
    if from == to {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let data: Vec<Json> = rows[from..to]
        .iter()
        .map(|d| {
            json!({
                "deleted_by": d.deleted_by.map_or(Json::Null, |u| user_ref(&store, u)),
                "id": d.id.to_string(),
                "display_name": d.display_name,
                "type": if d.permanent { "permanent" } else { "recycle" },
                "created_by": d.created_by.map_or(Json::Null, |u| user_ref(&store, u)),
                "deleted_time": format_time(d.deleted_time),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "data": data,
        "info": {"per_page": per_page, "count": to - from, "page": page, "more_records": to < rows.len()},
    }))
    .into_response())
}

/// `GET /crm/v8/org`: the org's details (scope `ZohoCRM.org.READ`).
pub async fn org(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require("org", Op::Read)?;
    let id = sb.org_id();
    Ok(axum::Json(json!({
        "org": [{
            "id": id,
            "zgid": id,
            "domain_name": format!("org{id}"),
            "company_name": "crmsync sandbox",
            "time_zone": "Asia/Kolkata",
            "currency": "USD",
            "type": "production",
        }]
    }))
    .into_response())
}
