//! CRM search: filter groups (OR of ANDs), sorts, paging with the 10,000-result cap,
//! over the search index's view, which lags writes.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// Results a search can page through, at most.
pub const MAX_RESULTS: usize = 10_000;
pub const MAX_LIMIT: usize = 200;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    pub property_name: String,
    pub operator: String,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub high_value: Option<Value>,
    #[serde(default)]
    pub values: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterGroup {
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Sort {
    Object {
        #[serde(rename = "propertyName")]
        property_name: String,
        #[serde(default)]
        direction: Option<String>,
    },
    Name(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    #[serde(default)]
    pub filter_groups: Vec<FilterGroup>,
    #[serde(default)]
    pub sorts: Vec<Sort>,
    #[serde(default)]
    pub properties: Vec<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default)]
    pub after: Option<Value>,
    #[serde(default)]
    pub query: Option<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Numbers as numbers, dates (ISO or ms) as ms.
fn number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_millis() as f64)
    })
}

fn compare(a: &str, b: &str) -> Ordering {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

/// Why a request was refused.
pub fn validate(req: &SearchRequest) -> Result<(), String> {
    const OPS: [&str; 12] = [
        "EQ",
        "NEQ",
        "LT",
        "LTE",
        "GT",
        "GTE",
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
    ];
    if req.filter_groups.len() > 5 {
        return Err("Too many filter groups: at most 5 are allowed".into());
    }
    for f in req.filter_groups.iter().flat_map(|g| &g.filters) {
        if !OPS.contains(&f.operator.as_str()) {
            return Err(format!("Unsupported operator {}", f.operator));
        }
    }
    if req.limit.unwrap_or(10) > MAX_LIMIT {
        return Err(format!("limit must be at most {MAX_LIMIT}"));
    }
    Ok(())
}

fn matches(f: &Filter, props: &BTreeMap<String, String>) -> bool {
    let have = props.get(&f.property_name).filter(|v| !v.is_empty());
    let want = f.value.as_ref().map(text).unwrap_or_default();
    match f.operator.as_str() {
        "HAS_PROPERTY" => have.is_some(),
        "NOT_HAS_PROPERTY" => have.is_none(),
        "NEQ" => have.is_none_or(|h| compare(h, &want) != Ordering::Equal),
        "NOT_IN" => have.is_none_or(|h| {
            !f.values
                .iter()
                .flatten()
                .any(|v| compare(h, &text(v)) == Ordering::Equal)
        }),
        _ => {
            let Some(h) = have else { return false };
            match f.operator.as_str() {
                "EQ" => compare(h, &want) == Ordering::Equal,
                "LT" => compare(h, &want) == Ordering::Less,
                "LTE" => compare(h, &want) != Ordering::Greater,
                "GT" => compare(h, &want) == Ordering::Greater,
                "GTE" => compare(h, &want) != Ordering::Less,
                "BETWEEN" => {
                    let high = f.high_value.as_ref().map(text).unwrap_or_default();
                    compare(h, &want) != Ordering::Less && compare(h, &high) != Ordering::Greater
                }
                "IN" => f
                    .values
                    .iter()
                    .flatten()
                    .any(|v| compare(h, &text(v)) == Ordering::Equal),
                "CONTAINS_TOKEN" => {
                    let token = want.trim_matches('*').to_lowercase();
                    h.to_lowercase().contains(&token)
                }
                _ => false,
            }
        }
    }
}

/// Whether a record's indexed properties match the request.
pub fn select(req: &SearchRequest, props: &BTreeMap<String, String>) -> bool {
    let groups_ok = req.filter_groups.is_empty()
        || req
            .filter_groups
            .iter()
            .any(|g| g.filters.iter().all(|f| matches(f, props)));
    let query_ok = req.query.as_deref().is_none_or(|q| {
        let q = q.to_lowercase();
        [
            "email",
            "firstname",
            "lastname",
            "name",
            "dealname",
            "domain",
        ]
        .iter()
        .any(|p| props.get(*p).is_some_and(|v| v.to_lowercase().contains(&q)))
    });
    groups_ok && query_ok
}

/// Orders matches by the requested sorts, then by id.
pub fn sort(req: &SearchRequest, rows: &mut [(u64, &BTreeMap<String, String>)]) {
    let keys: Vec<(String, bool)> = req
        .sorts
        .iter()
        .map(|s| match s {
            Sort::Object {
                property_name,
                direction,
            } => (
                property_name.clone(),
                direction.as_deref() == Some("DESCENDING"),
            ),
            Sort::Name(n) => match n.strip_prefix('-') {
                Some(n) => (n.to_owned(), true),
                None => (n.clone(), false),
            },
        })
        .collect();
    rows.sort_by(|(a_id, a), (b_id, b)| {
        for (key, desc) in &keys {
            let ord = match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => compare(x, y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            let ord = if *desc { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        a_id.cmp(b_id)
    });
}

/// The offset `after` stands for.
pub fn offset(req: &SearchRequest) -> Result<usize, String> {
    match &req.after {
        None => Ok(0),
        Some(v) => text(v)
            .parse()
            .map_err(|_| format!("after must be a number, got {v}")),
    }
}
