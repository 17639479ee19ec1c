//! Field mappings: how a workspace's provider fields land on canonical fields, as pure
//! functions (`CrmFieldMapping` in the deployment guide).
//!
//! Every provider adapter already lands each field somewhere: its standard fields
//! under canonical names (HubSpot's `firstname` as `first_name`), every other field
//! (custom ones included) under its own API name. A [`Mapping`] is a list of
//! [`Rule`]s on top of that default, per workspace, provider and object: each takes
//! one provider field (or, to join, several), optionally transforms the value, and
//! lands it under a target of the workspace's choosing (or drops it). Fields no rule
//! names keep their default landing.
//!
//! Rules read the change as the adapter landed it and never each other's output, so
//! their order does not matter, and every value keeps the version of the change that
//! carried it: a mapped change merges exactly as an unmapped one does. A value a
//! transform cannot read (a date that is not one) is kept as it came: a mapping never
//! loses data. Because raw events are kept, a new mapping applies to history by replay.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::fields::{FieldSet, Version};

/// At most this many rules per mapping.
pub const MAX_RULES: usize = 500;
/// Field names are at most this long.
pub const MAX_NAME: usize = 200;

/// One field or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn as_slice(&self) -> &[String] {
        match self {
            Names::One(name) => std::slice::from_ref(name),
            Names::Many(names) => names,
        }
    }
}

/// How a value is changed on its way to its target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// As it is (a rename, when the target differs).
    #[default]
    Copy,
    /// A number: `"1,234.50"` → `1234.5`, `"42"` → `42`.
    Number,
    /// A whole number: `"42"`, `42.0` → `42` (a fraction is kept as it came).
    Integer,
    /// `true`/`false` from `yes`, `no`, `on`, `off`, `1`, `0`, `y`, `n`, `checked`, …
    Boolean,
    /// A calendar date `YYYY-MM-DD` from RFC 3339, `YYYY-MM-DD[ HH:MM:SS]` or epoch
    /// milliseconds (HubSpot's date properties), in UTC.
    Date,
    /// An RFC 3339 UTC time from the same inputs (a date is its midnight UTC).
    Datetime,
    /// Picklist or enum values: `values` maps each value (as text) to another;
    /// a value not listed becomes `default` when one is given, else stays.
    Map {
        values: BTreeMap<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<Value>,
    },
    /// A full name into two targets, first and last, split at its last space.
    SplitName,
    /// Several sources into one target, the non-empty ones joined by `separator`
    /// (default a space). Computed from changes that carry every source: snapshots
    /// do; a change of one property leaves the target until the next snapshot.
    Join {
        #[serde(default = "space")]
        separator: String,
    },
}

fn space() -> String {
    " ".to_owned()
}

/// One rule of a mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The provider field (its API name), or for `join` the fields. A field may
    /// feed several rules: kept as `first_name` and joined into a full name too.
    pub source: Names,
    /// The canonical field it lands on (two for `split_name`); `null` drops it.
    /// Required: leaving it out is refused rather than taken as a drop.
    #[serde(deserialize_with = "Option::deserialize")]
    pub target: Option<Names>,
    #[serde(default, skip_serializing_if = "is_copy")]
    pub transform: Transform,
}

fn is_copy(t: &Transform) -> bool {
    *t == Transform::Copy
}

/// A workspace's rules for one provider and object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub rules: Vec<Rule>,
}

/// One reason a mapping is refused, with where it is (`rules[2].target`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingProblem {
    pub field: String,
    pub message: String,
}

/// What a mapping is checked against: where each field lands by default.
pub trait Landing {
    /// The field a provider field lands as by default.
    fn landing(&self, provider_field: &str) -> String;
    /// The fields the defaults fill (canonical names), which a rule may only take as
    /// a target once it moves or drops their default source.
    fn default_targets(&self) -> Vec<(String, String)>;
}

/// Whether a JSON value holds a NUL character (Postgres' jsonb refuses them).
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn valid_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err("must be 1-200 characters");
    }
    if name.starts_with('$') {
        return Err("must not start with $ (record state)");
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("must not hold control characters");
    }
    Ok(())
}

impl Mapping {
    /// Every problem with the mapping (empty when it is good), checked against the
    /// provider's default landing.
    pub fn problems(&self, landing: &dyn Landing) -> Vec<MappingProblem> {
        let mut problems = Vec::new();
        let mut bad = |field: String, message: String| {
            problems.push(MappingProblem { field, message });
        };
        if self.rules.len() > MAX_RULES {
            bad(
                "rules".into(),
                format!("at most {MAX_RULES} rules, not {}", self.rules.len()),
            );
        }
        let mut sources: BTreeSet<String> = BTreeSet::new();
        let mut targets: BTreeMap<String, usize> = BTreeMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = |part: &str| format!("rules[{i}].{part}");
            let (want_sources, want_targets) = match &rule.transform {
                Transform::Join { .. } => ("two or more fields", "one field"),
                Transform::SplitName => ("one field", "two fields, first and last"),
                _ => ("one field", "one field, or null to drop it"),
            };
            let source_ok = match (&rule.transform, &rule.source) {
                (Transform::Join { .. }, Names::Many(s)) => s.len() >= 2,
                (Transform::Join { .. }, Names::One(_)) => false,
                (_, Names::One(_)) => true,
                (_, Names::Many(_)) => false,
            };
            if !source_ok {
                bad(at("source"), format!("must be {want_sources}"));
            }
            let target_ok = match (&rule.transform, &rule.target) {
                (Transform::SplitName, Some(Names::Many(t))) => t.len() == 2,
                (Transform::SplitName, _) => false,
                (Transform::Copy, None) => true,
                (_, None) => false,
                (_, Some(Names::One(_))) => true,
                (_, Some(Names::Many(_))) => false,
            };
            if !target_ok {
                bad(at("target"), format!("must be {want_targets}"));
            }
            for name in rule.source.as_slice() {
                if let Err(why) = valid_name(name) {
                    bad(at("source"), format!("{name:?} {why}"));
                } else {
                    sources.insert(name.clone());
                }
            }
            for name in rule.target.iter().flat_map(Names::as_slice) {
                if let Err(why) = valid_name(name) {
                    bad(at("target"), format!("{name:?} {why}"));
                } else if let Some(j) = targets.insert(name.clone(), i) {
                    bad(
                        at("target"),
                        format!("{name:?} is already the target of rules[{j}]"),
                    );
                }
            }
            match &rule.transform {
                Transform::Map { values, default } => {
                    if values.is_empty() {
                        bad(at("transform.map.values"), "must list a value".into());
                    }
                    let texts = values
                        .iter()
                        .flat_map(|(k, v)| [Value::String(k.clone()), v.clone()])
                        .chain(default.clone());
                    if texts.into_iter().any(|v| has_nul(&v)) {
                        bad(at("transform.map"), "must not hold NUL characters".into());
                    }
                }
                Transform::Join { separator }
                    if separator.contains('\0') || separator.len() > 100 =>
                {
                    bad(
                        at("transform.join.separator"),
                        "must be at most 100 bytes, without NUL".into(),
                    );
                }
                _ => {}
            }
        }
        // A target may not be where a default still lands another field. A rule
        // moves its source's own landing only: a lookup's name, an Odoo contact's
        // first and last names still land by default.
        for (source, target) in landing.default_targets() {
            if sources.contains(&source) && landing.landing(&source) == target {
                continue;
            }
            if let Some(&i) = targets.get(&target) {
                bad(
                    format!("rules[{i}].target"),
                    format!(
                        "{target:?} is where {source:?} lands by default; \
                         map or drop {source:?} in another rule first"
                    ),
                );
            }
        }
        problems
    }

    /// The mapping ready to apply, each source resolved to where it lands by default.
    pub fn compile(&self, landing: &dyn Landing) -> Compiled {
        Compiled {
            rules: self
                .rules
                .iter()
                .map(|rule| CompiledRule {
                    keys: rule
                        .source
                        .as_slice()
                        .iter()
                        .map(|s| landing.landing(s))
                        .collect(),
                    targets: rule
                        .target
                        .as_ref()
                        .map(|t| t.as_slice().to_vec())
                        .unwrap_or_default(),
                    transform: rule.transform.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct CompiledRule {
    keys: Vec<String>,
    targets: Vec<String>,
    transform: Transform,
}

/// A mapping resolved against its provider's default landing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    rules: Vec<CompiledRule>,
}

impl Compiled {
    /// A change as the adapter landed it, re-shaped by the rules.
    pub fn apply(&self, landed: &FieldSet) -> FieldSet {
        if self.rules.is_empty() {
            return landed.clone();
        }
        let consumed: BTreeSet<&str> = self
            .rules
            .iter()
            .flat_map(|r| r.keys.iter().map(String::as_str))
            .collect();
        let mut out = FieldSet::default();
        for (field, version) in &landed.versions {
            if !consumed.contains(field.as_str()) {
                let value = landed.fields.get(field).cloned().unwrap_or(Value::Null);
                out.fields.insert(field.clone(), value);
                out.versions.insert(field.clone(), version.clone());
            }
        }
        for rule in &self.rules {
            let mut values = Vec::with_capacity(rule.keys.len());
            let mut version: Option<&Version> = None;
            for key in &rule.keys {
                let Some(v) = landed.versions.get(key) else {
                    break;
                };
                values.push(landed.fields.get(key).cloned().unwrap_or(Value::Null));
                version = version.max(Some(v));
            }
            let (Some(version), true) = (version, values.len() == rule.keys.len()) else {
                continue;
            };
            let results = transform(&rule.transform, &values);
            for (target, value) in rule.targets.iter().zip(results) {
                out.fields.insert(target.clone(), value);
                out.versions.insert(target.clone(), version.clone());
            }
        }
        out
    }
}

/// Applies `t` to the source values of one rule: one result per target.
pub fn transform(t: &Transform, values: &[Value]) -> Vec<Value> {
    let first = values.first().cloned().unwrap_or(Value::Null);
    match t {
        Transform::Copy => vec![first],
        Transform::Number => vec![to_number(&first, false)],
        Transform::Integer => vec![to_number(&first, true)],
        Transform::Boolean => vec![to_bool(&first)],
        Transform::Date => vec![to_time(&first).map_or(first, |(t, _)| {
            Value::String(t.date_naive().format("%Y-%m-%d").to_string())
        })],
        Transform::Datetime => vec![to_time(&first).map_or(first, |(t, _)| {
            Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        })],
        Transform::Map {
            values: map,
            default,
        } => {
            let mapped = text_of(&first)
                .and_then(|k| map.get(&k).cloned())
                .or_else(|| text_of(&first).and(default.clone()));
            vec![mapped.unwrap_or(first)]
        }
        Transform::SplitName if !first.is_string() && !first.is_null() => {
            // Not a name: kept whole in the first target.
            vec![first, Value::Null]
        }
        Transform::SplitName => {
            let (given, family) = split_name(&first);
            vec![given, family]
        }
        Transform::Join { separator } => {
            let parts: Vec<String> = values
                .iter()
                .filter_map(text_of)
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            vec![if parts.is_empty() {
                Value::Null
            } else {
                Value::String(parts.join(separator))
            }]
        }
    }
}

/// A full name as first and last, split at its last space (Odoo's one `name` of a
/// person, `split_name`): `"Ada King Lovelace"` → `("Ada King", "Lovelace")`, one
/// word is a last name, and empty parts are null.
pub fn split_name(full: &Value) -> (Value, Value) {
    let full = full.as_str().unwrap_or_default().trim();
    let (first, last) = full.rsplit_once(' ').unwrap_or(("", full));
    let text = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::String(s.to_owned())
        }
    };
    (text(first.trim()), text(last))
}

/// A scalar as text (`null`, arrays and objects have none).
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A number's text without its group separators (`1,234_567 8` → `12345678`).
fn digits(s: &str) -> String {
    s.trim()
        .chars()
        .filter(|c| !matches!(c, ',' | '_' | ' '))
        .collect()
}

fn to_number(v: &Value, whole: bool) -> Value {
    // Whole numbers stay exact (ids beyond 2^53 would not survive a float).
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => return v.clone(),
        Value::String(s) => {
            if let Ok(i) = digits(s).parse::<i64>() {
                return Value::Number(Number::from(i));
            }
        }
        _ => {}
    }
    let parsed = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => digits(s).parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    };
    let Some(f) = parsed else {
        return v.clone();
    };
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Value::Number(Number::from(f as i64));
    }
    if whole {
        return v.clone();
    }
    Number::from_f64(f).map_or_else(|| v.clone(), Value::Number)
}

fn to_bool(v: &Value) -> Value {
    let text = match v {
        Value::Bool(_) => return v.clone(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_ascii_lowercase(),
        _ => return v.clone(),
    };
    match text.as_str() {
        "true" | "t" | "yes" | "y" | "1" | "on" | "checked" => Value::Bool(true),
        "false" | "f" | "no" | "n" | "0" | "off" | "unchecked" => Value::Bool(false),
        _ => v.clone(),
    }
}

/// A time read from RFC 3339, `YYYY-MM-DD[ HH:MM:SS]` (UTC) or epoch milliseconds;
/// the flag says whether it was a bare date.
fn to_time(v: &Value) -> Option<(DateTime<Utc>, bool)> {
    // Epoch milliseconds, as HubSpot sends dates, are above 1e11 for any time since
    // 1973; a smaller number is something else (epoch seconds, a count) and is kept.
    let ms = |n: i64| {
        (n >= 100_000_000_000)
            .then(|| Utc.timestamp_millis_opt(n).single())
            .flatten()
            .map(|t| (t, false))
    };
    match v {
        Value::Number(n) => n.as_i64().and_then(ms),
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                if s.len() == 8 {
                    return NaiveDate::parse_from_str(s, "%Y%m%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|t| (t.and_utc(), true));
                }
                return s.parse().ok().and_then(ms);
            }
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some((t.with_timezone(&Utc), false));
            }
            if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
                return Some((t.and_utc(), false));
            }
            if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
                return Some((t.and_utc(), false));
            }
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| (t.and_utc(), true))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// HubSpot's contact defaults, as the adapter lands them.
    struct Hs;

    impl Landing for Hs {
        fn landing(&self, field: &str) -> String {
            match field {
                "firstname" => "first_name".into(),
                "lastname" => "last_name".into(),
                "phone" => "phone".into(),
                "mobilephone" => "mobile_phone".into(),
                "Account_Name" => "company_id".into(),
                other => other.into(),
            }
        }
        fn default_targets(&self) -> Vec<(String, String)> {
            let mut out: Vec<(String, String)> = ["firstname", "lastname", "phone", "mobilephone"]
                .iter()
                .map(|f| (f.to_string(), self.landing(f)))
                .collect();
            // A lookup, as Zoho's: its id and its name.
            out.push(("Account_Name".into(), "company_id".into()));
            out.push(("Account_Name".into(), "company_name".into()));
            out
        }
    }

    fn v(ms: i64, id: &str) -> Version {
        Version::new(Utc.timestamp_millis_opt(ms).unwrap(), id)
    }

    fn mapping(rules: Value) -> Mapping {
        serde_json::from_value(json!({ "rules": rules })).unwrap()
    }

    fn landed(fields: &[(&str, Value)], version: &Version) -> FieldSet {
        let mut set = FieldSet::default();
        for (f, value) in fields {
            set.set(f, value.clone(), version);
        }
        set
    }

    #[test]
    fn transforms_read_what_crms_send() {
        let cases: Vec<(Transform, Value, Value)> = vec![
            (Transform::Number, json!("1,234.50"), json!(1234.5)),
            (Transform::Number, json!(" 42 "), json!(42)),
            (Transform::Number, json!("n/a"), json!("n/a")),
            (Transform::Integer, json!("42.0"), json!(42)),
            (Transform::Integer, json!("42.5"), json!("42.5")),
            (Transform::Boolean, json!("Yes"), json!(true)),
            (Transform::Boolean, json!("off"), json!(false)),
            (Transform::Boolean, json!(0), json!(false)),
            (Transform::Boolean, json!("maybe"), json!("maybe")),
            (Transform::Date, json!("1735689600000"), json!("2025-01-01")),
            (
                Transform::Date,
                json!("2025-03-04T23:30:00-02:00"),
                json!("2025-03-05"),
            ),
            (Transform::Date, json!("2025-03-04"), json!("2025-03-04")),
            (Transform::Date, json!("next week"), json!("next week")),
            (Transform::Date, json!("20250304"), json!("2025-03-04")),
            (Transform::Date, json!("1735689600"), json!("1735689600")),
            (Transform::Date, json!(42), json!(42)),
            (
                Transform::Number,
                json!(9007199254740993_u64),
                json!(9007199254740993_u64),
            ),
            (
                Transform::Number,
                json!("9007199254740993"),
                json!(9007199254740993_i64),
            ),
            (
                Transform::Datetime,
                json!("2025-03-04 10:11:12"),
                json!("2025-03-04T10:11:12Z"),
            ),
            (
                Transform::Datetime,
                json!(1735689600000_i64),
                json!("2025-01-01T00:00:00Z"),
            ),
            (Transform::Datetime, json!(null), json!(null)),
            (
                Transform::Map {
                    values: [("1".to_owned(), json!("hot"))].into_iter().collect(),
                    default: Some(json!("cold")),
                },
                json!(1),
                json!("hot"),
            ),
            (
                Transform::Map {
                    values: [("1".to_owned(), json!("hot"))].into_iter().collect(),
                    default: Some(json!("cold")),
                },
                json!("7"),
                json!("cold"),
            ),
            (
                Transform::Map {
                    values: [("1".to_owned(), json!("hot"))].into_iter().collect(),
                    default: None,
                },
                json!("7"),
                json!("7"),
            ),
        ];
        for (t, input, want) in cases {
            assert_eq!(
                transform(&t, std::slice::from_ref(&input)),
                vec![want],
                "{t:?} of {input}"
            );
        }
        assert_eq!(
            transform(&Transform::SplitName, &[json!(" Ada King Lovelace ")]),
            vec![json!("Ada King"), json!("Lovelace")]
        );
        assert_eq!(
            transform(&Transform::SplitName, &[json!(42)]),
            vec![json!(42), json!(null)],
            "not a name: kept whole"
        );
        assert_eq!(
            transform(&Transform::SplitName, &[json!("Cher")]),
            vec![json!(null), json!("Cher")]
        );
        assert_eq!(
            transform(
                &Transform::Join { separator: space() },
                &[json!("Ada"), json!(null), json!(" Lovelace")]
            ),
            vec![json!("Ada Lovelace")]
        );
    }

    #[test]
    fn rules_rename_transform_drop_split_and_join() {
        let m = mapping(json!([
            {"source": "hs_score", "target": "score", "transform": "integer"},
            {"source": "mobilephone", "target": null},
            {"source": "full_name__c", "target": ["given", "family"], "transform": "split_name"},
            {"source": ["firstname", "lastname"], "target": "display_name",
             "transform": {"join": {}}},
            {"source": "tier", "target": "tier", "transform": {"map": {"values": {"a": "gold"}}}},
        ]));
        assert_eq!(m.problems(&Hs), vec![]);
        let version = v(5_000, "e1");
        let got = m.compile(&Hs).apply(&landed(
            &[
                ("first_name", json!("Ada")),
                ("last_name", json!("Lovelace")),
                ("mobile_phone", json!("+44 1")),
                ("hs_score", json!("12")),
                ("full_name__c", json!("Grace Hopper")),
                ("tier", json!("a")),
                ("email", json!("ada@example.com")),
            ],
            &version,
        ));
        let want = json!({
            "display_name": "Ada Lovelace", "email": "ada@example.com",
            "family": "Hopper", "given": "Grace", "score": 12, "tier": "gold",
        });
        assert_eq!(serde_json::to_value(&got.fields).unwrap(), want);
        assert!(got.versions.values().all(|x| *x == version));
        // A change of one joined field leaves the join alone.
        let got = m
            .compile(&Hs)
            .apply(&landed(&[("first_name", json!("Augusta"))], &version));
        assert!(got.fields.is_empty(), "{got:?}");
    }

    #[test]
    fn bad_mappings_are_refused_with_where_and_why() {
        let cases = vec![
            (
                json!([{"source": "a", "target": "$deleted"}]),
                "rules[0].target",
            ),
            (json!([{"source": "", "target": "x"}]), "rules[0].source"),
            (
                json!([{"source": "a", "target": "x"}, {"source": "b", "target": "x"}]),
                "rules[1].target",
            ),
            (
                json!([{"source": "a", "target": ["x", "y"]}]),
                "rules[0].target",
            ),
            (
                json!([{"source": "a", "target": ["x"], "transform": "split_name"}]),
                "rules[0].target",
            ),
            (
                json!([{"source": "a", "target": "x", "transform": {"join": {}}}]),
                "rules[0].source",
            ),
            (
                json!([{"source": "a", "target": null, "transform": "date"}]),
                "rules[0].target",
            ),
            (
                json!([{"source": "a", "target": "x", "transform": {"map": {"values": {}}}}]),
                "rules[0].transform.map.values",
            ),
            (
                json!([{"source": "mobilephone", "target": "phone"}]),
                "rules[0].target",
            ),
            (
                json!([{"source": "a", "target": "x", "transform": {"map": {"values": {"a\0": "b"}}}}]),
                "rules[0].transform.map",
            ),
            (
                json!([{"source": "a", "target": "x", "transform": {"map": {"values": {"a": "b"}, "default": "\0"}}}]),
                "rules[0].transform.map",
            ),
            // Moving a lookup moves its id; its name still lands by default.
            (
                json!([{"source": "Account_Name", "target": "account"},
                       {"source": "Title", "target": "company_name"}]),
                "rules[1].target",
            ),
        ];
        for (rules, at) in cases {
            let problems = mapping(rules.clone()).problems(&Hs);
            assert!(
                problems.iter().any(|p| p.field == at),
                "{rules}: {problems:?}"
            );
        }
        // Moving the default source away frees its target.
        let swap = mapping(json!([
            {"source": "mobilephone", "target": "phone"},
            {"source": "phone", "target": "work_phone"},
        ]));
        assert_eq!(swap.problems(&Hs), vec![]);
        for bad in [
            json!({"rules": [{"source": "a"}]}),
            json!({"rules": [{"source": "a", "target": "b", "transform": "shout"}]}),
            json!({"rules": [{"source": "a", "target": "b", "extra": 1}]}),
            json!({"rules": [{"target": "b"}]}),
        ] {
            assert!(serde_json::from_value::<Mapping>(bad).is_err());
        }
    }

    proptest! {
        /// Mapping each change and then merging gives the same row as merging and then
        /// mapping whole snapshots would, in any order: the mapping keeps the
        /// versions, so it cannot reorder history. Nothing is lost: every source value
        /// a copy rule reads lands on its target.
        #[test]
        fn mapped_changes_merge_in_any_order(
            // Each change a single property (a webhook) or several (a snapshot).
            changes in prop::collection::vec(
                (prop::collection::btree_map(
                    prop::sample::select(vec!["firstname", "lastname", "hs_score", "mobilephone", "email"]),
                    prop::sample::select(vec![json!("7"), json!("Ada"), json!(null), json!("x y")]),
                    1..4),
                 0i64..50),
                1..15),
            seed in any::<u64>(),
        ) {
            let m = mapping(json!([
                {"source": "hs_score", "target": "score", "transform": "number"},
                {"source": "mobilephone", "target": "phone"},
                {"source": "phone", "target": null},
                {"source": ["firstname", "lastname"], "target": "display", "transform": {"join": {}}},
            ]));
            prop_assert_eq!(m.problems(&Hs), vec![]);
            let compiled = m.compile(&Hs);
            let sets: Vec<FieldSet> = changes
                .iter()
                .enumerate()
                .map(|(i, (fields, ms))| {
                    let landed_as: Vec<(String, Value)> =
                        fields.iter().map(|(f, value)| (Hs.landing(f), value.clone())).collect();
                    let refs: Vec<(&str, Value)> =
                        landed_as.iter().map(|(f, value)| (f.as_str(), value.clone())).collect();
                    landed(&refs, &v(*ms, &format!("e{i}")))
                })
                .collect();
            let fold = |order: &[FieldSet]| {
                let mut row = FieldSet::default();
                for s in order {
                    row.merge(&compiled.apply(s));
                }
                row
            };
            let forward = fold(&sets);
            let mut shuffled: Vec<FieldSet> = sets.iter().chain(sets.iter()).cloned().collect();
            crate::fields::shuffle(&mut shuffled, seed);
            prop_assert_eq!(&forward, &fold(&shuffled));
            // The newest mobile phone is the phone, as given.
            let newest = sets
                .iter()
                .filter(|s| s.versions.contains_key("mobile_phone"))
                .max_by_key(|s| s.versions["mobile_phone"].clone());
            if let Some(newest) = newest {
                prop_assert_eq!(forward.fields.get("phone"), newest.fields.get("mobile_phone"));
            }
            prop_assert!(!forward.fields.contains_key("mobile_phone"));
            // The display name is the join of the newest change that carried both.
            let newest_both = sets
                .iter()
                .filter(|s| s.versions.contains_key("first_name") && s.versions.contains_key("last_name"))
                .max_by_key(|s| s.versions["first_name"].clone());
            if let Some(both) = newest_both {
                let want = transform(
                    &Transform::Join { separator: space() },
                    &[both.fields["first_name"].clone(), both.fields["last_name"].clone()],
                );
                prop_assert_eq!(forward.fields.get("display"), Some(&want[0]));
            } else {
                prop_assert!(!forward.fields.contains_key("display"));
            }
            prop_assert!(!forward.fields.contains_key("hs_score"));
        }
    }
}
