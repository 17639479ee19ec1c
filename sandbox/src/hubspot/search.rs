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

/// Properties whose values HubSpot orders as numbers or dates. Anything else, custom
/// numeric properties included, orders as text.
const NUMERIC: [&str; 9] = [
    "hs_object_id",
    "createdate",
    "lastmodifieddate",
    "hs_lastmodifieddate",
    "amount",
    "closedate",
    "hs_timestamp",
    "hs_call_duration",
    "hs_createdate",
];

/// A finite number, or an RFC 3339 date as epoch milliseconds.
fn number(s: &str) -> Option<f64> {
    let n = s.trim().parse::<f64>().ok().or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|d| d.timestamp_millis() as f64)
    })?;
    n.is_finite().then_some(n)
}

/// What a value orders by. Numbers come before text, so that a numeric property
/// holding some text still orders totally.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Number(f64),
    Text(String),
}

impl Key {
    fn of(property: &str, value: &str) -> Key {
        if NUMERIC.contains(&property) {
            if let Some(n) = number(value) {
                return Key::Number(n);
            }
        }
        Key::Text(value.to_lowercase())
    }

    fn order(&self, other: &Key) -> Ordering {
        match (self, other) {
            // Both finite: never unordered.
            (Key::Number(a), Key::Number(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            (Key::Number(_), Key::Text(_)) => Ordering::Less,
            (Key::Text(_), Key::Number(_)) => Ordering::Greater,
            (Key::Text(a), Key::Text(b)) => a.cmp(b),
        }
    }
}

/// How two values of `property` compare, for filters: numerically when the property is
/// numeric and both values are numbers or dates, else as text without regard to case.
/// A total preorder: every value maps to one [`Key`].
fn compare(property: &str, a: &str, b: &str) -> Ordering {
    Key::of(property, a).order(&Key::of(property, b))
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
    let compare = |a: &str, b: &str| compare(&f.property_name, a, b);
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

/// Orders matches by the requested sorts, then by id. Each value is keyed once, and
/// keys order totally (equal text of another case by its bytes), so any data sorts
/// without panicking and always the same way.
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
    if keys.is_empty() {
        rows.sort_by_key(|(id, _)| *id);
        return;
    }
    type Keyed<'a> = (Vec<Option<(Key, &'a str)>>, usize);
    let mut keyed: Vec<Keyed> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, props))| {
            let values = keys
                .iter()
                .map(|(name, _)| props.get(name).map(|v| (Key::of(name, v), v.as_str())))
                .collect();
            (values, i)
        })
        .collect();
    keyed.sort_by(|(a, ai), (b, bi)| {
        for ((x, y), (_, desc)) in a.iter().zip(b).zip(&keys) {
            let ord = match (x, y) {
                (Some((kx, rx)), Some((ky, ry))) => kx.order(ky).then_with(|| rx.cmp(ry)),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            let ord = if *desc { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        rows[*ai].0.cmp(&rows[*bi].0)
    });
    let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
    let sorted: Vec<(u64, &BTreeMap<String, String>)> = order.iter().map(|i| rows[*i]).collect();
    rows.copy_from_slice(&sorted);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[0-9a-fA-F .:eE+-]{0,10}",
            any::<f64>().prop_map(|f| f.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            (0i64..4_102_444_800_000).prop_map(super::super::store::iso),
            prop::sample::select(vec![
                "NaN", "inf", "-inf", "-0", "0", "1e400", "10", "9", "1e", ""
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn property() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "amount",
            "createdate",
            "hs_object_id",
            "name",
            "email",
        ])
    }

    fn sorted(
        property: &str,
        desc: bool,
        maps: &[BTreeMap<String, String>],
        ids: &[u64],
    ) -> Vec<u64> {
        let req = SearchRequest {
            sorts: vec![Sort::Object {
                property_name: property.to_owned(),
                direction: Some(if desc { "DESCENDING" } else { "ASCENDING" }.to_owned()),
            }],
            ..SearchRequest::default()
        };
        let mut rows: Vec<(u64, &BTreeMap<String, String>)> =
            ids.iter().map(|id| (*id, &maps[*id as usize])).collect();
        sort(&req, &mut rows);
        rows.into_iter().map(|(id, _)| id).collect()
    }

    proptest! {
        #[test]
        fn sorting_any_values_never_panics_and_is_consistent(
            values in prop::collection::vec(prop::option::of(value()), 0..80),
            property in property(),
            desc in any::<bool>(),
        ) {
            let maps: Vec<BTreeMap<String, String>> = values
                .iter()
                .map(|v| v.iter().map(|v| (property.to_owned(), v.clone())).collect())
                .collect();
            let ids: Vec<u64> = (0..maps.len() as u64).collect();
            let reversed: Vec<u64> = ids.iter().rev().copied().collect();
            let order = sorted(property, desc, &maps, &ids);
            prop_assert_eq!(&order, &sorted(property, desc, &maps, &reversed));
            for pair in order.windows(2) {
                let (a, b) = (&values[pair[0] as usize], &values[pair[1] as usize]);
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let ord = compare(property, a, b);
                        let ord = if desc { ord.reverse() } else { ord };
                        prop_assert_ne!(ord, Ordering::Greater, "{:?} before {:?}", a, b);
                    }
                    (None, Some(_)) => prop_assert!(desc, "a missing value sorts last ascending"),
                    (Some(_), None) => prop_assert!(!desc, "and first descending"),
                    (None, None) => prop_assert!(pair[0] < pair[1]),
                }
            }
        }

        #[test]
        fn compare_is_a_total_preorder(a in value(), b in value(), c in value(), property in property()) {
            let ab = compare(property, &a, &b);
            prop_assert_eq!(ab, compare(property, &b, &a).reverse());
            if ab != Ordering::Greater && compare(property, &b, &c) != Ordering::Greater {
                prop_assert_ne!(compare(property, &a, &c), Ordering::Greater);
            }
        }
    }

    #[test]
    fn numbers_and_text_in_one_numeric_property_order_totally() {
        // Mixing numeric and text comparison made "9" < "10" < "1e" < "9": a cycle.
        let cmp = |a, b| compare("amount", a, b);
        assert_eq!(cmp("9", "10"), Ordering::Less);
        assert_eq!(cmp("10", "1e"), Ordering::Less);
        assert_eq!(cmp("9", "1e"), Ordering::Less);
        assert_eq!(cmp("1.0", "1"), Ordering::Equal);
        assert_eq!(cmp("NaN", "NaN"), Ordering::Equal);
        assert_eq!(cmp("inf", "9"), Ordering::Greater, "infinity is text");
        assert_eq!(
            compare("createdate", "2024-01-01T00:00:00Z", "1704067200000"),
            Ordering::Equal
        );
        assert_eq!(
            compare("name", "9", "10"),
            Ordering::Greater,
            "text is text"
        );
        assert_eq!(compare("name", "Acme", "acme"), Ordering::Equal);
    }
}
