//! Conflict rules as pure functions (ARCHITECTURE.md, "Projection semantics").
//!
//! Contacts and companies (the CRM is the authority) and deals (a conservative
//! merge that loses nothing) are rules over a field's edits from both sides: see
//! [`edits`].
//!
//! Activities: **the app is the authority for the call outcomes it created.** When
//! crmsync pushes an outcome, the fields it wrote (as the CRM's own mapping reads them
//! back) are the app's; a CRM change to one of those fields is not applied but kept as
//! a conflict, with both values, their sources and versions. Fields the app did not
//! write (an owner the CRM assigns, a custom field) follow the CRM, as every field of
//! a CRM-born activity does.
//!
//! The app's values are fixed once the push has succeeded, so the rule is a function
//! of one incoming change alone: the same changes in any order, with any duplicates,
//! give the same row and the same set of conflicts (a conflict is identified by its
//! record, field and the losing value: an edit read back again is not a new one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fields::{FieldSet, Version};

pub mod edits;

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    App,
    Crm,
}

impl Source {
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Crm => "crm",
        }
    }
}

/// A value a rule did not apply, beside the value it kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub field: String,
    pub kept: Value,
    pub kept_source: Source,
    pub kept_version: Option<Version>,
    pub lost: Value,
    pub lost_source: Source,
    pub lost_version: Version,
}

/// What a change to an app-born activity comes to: the fields that apply (those the
/// app did not write) and the conflicts (fields it wrote, changed by the CRM).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ruled {
    pub apply: FieldSet,
    pub conflicts: Vec<Conflict>,
}

/// Applies the activities rule to a CRM `change` of an activity the app created with
/// `app` (its fields and the version they were written at). A CRM value equal to the
/// app's is no conflict (the CRM reading back what crmsync wrote).
pub fn app_born_activity(app: &FieldSet, change: &FieldSet) -> Ruled {
    let mut ruled = Ruled::default();
    for (field, version) in &change.versions {
        let value = change.fields.get(field).cloned().unwrap_or(Value::Null);
        match app.fields.get(field) {
            None => {
                ruled.apply.set(field, value, version);
            }
            Some(kept) if same_value(kept, &value) => {}
            Some(kept) => ruled.conflicts.push(Conflict {
                field: field.clone(),
                kept: kept.clone(),
                kept_source: Source::App,
                kept_version: app.versions.get(field).cloned(),
                lost: value,
                lost_source: Source::Crm,
                lost_version: version.clone(),
            }),
        }
    }
    ruled
}

/// Equal as the CRM would show them: numbers by value (`60` and `60.0`), text
/// trimmed (CRMs strip trailing whitespace).
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => x.trim() == y.trim(),
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n)) => {
            s.trim().parse::<f64>().ok() == n.as_f64()
        }
        _ => a == b,
    }
}

/// The app's fields at `version`, as a [`FieldSet`].
pub fn app_fields(fields: &BTreeMap<String, Value>, version: &Version) -> FieldSet {
    let mut set = FieldSet::default();
    for (field, value) in fields {
        set.set(field, value.clone(), version);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::json;

    fn v(ms: i64, id: &str) -> Version {
        Version::new(Utc.timestamp_millis_opt(ms).unwrap(), id)
    }

    fn app() -> FieldSet {
        app_fields(
            &[
                ("subject".to_owned(), json!("Outbound call: connected")),
                ("duration_secs".to_owned(), json!(61)),
                ("direction".to_owned(), json!("outbound")),
            ]
            .into_iter()
            .collect(),
            &v(1_000, "app"),
        )
    }

    fn change(ms: i64, fields: &[(&str, Value)]) -> FieldSet {
        let mut set = FieldSet::default();
        for (f, value) in fields {
            set.set(f, value.clone(), &v(ms, &format!("e{ms}")));
        }
        set
    }

    #[test]
    fn the_table_of_cases() {
        let cases: Vec<(&str, FieldSet, Vec<&str>, Vec<&str>)> = vec![
            (
                "the CRM reads back what crmsync wrote",
                change(
                    2_000,
                    &[
                        ("subject", json!("Outbound call: connected ")),
                        ("duration_secs", json!("61")),
                    ],
                ),
                vec![],
                vec![],
            ),
            (
                "a CRM edit to an app field is a conflict",
                change(2_000, &[("subject", json!("Edited in the CRM"))]),
                vec![],
                vec!["subject"],
            ),
            (
                "fields the app did not write follow the CRM",
                change(
                    2_000,
                    &[("owner_id", json!("42")), ("direction", json!("outbound"))],
                ),
                vec!["owner_id"],
                vec![],
            ),
            (
                "a CRM deletion of an app-born call is a conflict too",
                change(
                    2_000,
                    &[("$deleted", json!(true)), ("subject", json!(null))],
                ),
                vec!["$deleted"],
                vec!["subject"],
            ),
        ];
        for (case, incoming, applied, conflicted) in cases {
            let ruled = app_born_activity(&app(), &incoming);
            let got: Vec<&str> = ruled.apply.fields.keys().map(String::as_str).collect();
            assert_eq!(got, applied, "{case}");
            let got: Vec<&str> = ruled.conflicts.iter().map(|c| c.field.as_str()).collect();
            assert_eq!(got, conflicted, "{case}");
            for c in &ruled.conflicts {
                assert_eq!(c.kept_source, Source::App, "{case}");
                assert_eq!(c.lost_source, Source::Crm, "{case}");
                assert_eq!(Some(&c.kept), app().fields.get(&c.field), "{case}");
            }
        }
    }

    proptest! {
        /// Any order of the same changes, with duplicates, applies the same fields and
        /// records the same conflicts; app values never change.
        #[test]
        fn order_and_repeats_change_nothing(
            edits in prop::collection::vec(
                (prop::sample::select(vec!["subject", "duration_secs", "owner_id", "notes"]),
                 prop::sample::select(vec![json!("a"), json!(61), json!("Outbound call: connected"), json!(null)]),
                 1_500i64..3_000),
                1..12),
            seed in any::<u64>(),
        ) {
            let changes: Vec<FieldSet> = edits
                .iter()
                .enumerate()
                .map(|(i, (f, value, ms))| {
                    let mut set = FieldSet::default();
                    set.set(f, value.clone(), &v(*ms, &format!("e{i}")));
                    set
                })
                .collect();
            let run = |order: &[FieldSet]| {
                let mut row = app();
                let mut conflicts = std::collections::BTreeSet::new();
                for c in order {
                    let ruled = app_born_activity(&app(), c);
                    row.merge(&ruled.apply);
                    for c in ruled.conflicts {
                        conflicts.insert((c.field, c.lost_version, c.lost.to_string()));
                    }
                }
                (row, conflicts)
            };
            let forward = run(&changes);
            let mut shuffled: Vec<FieldSet> = changes.iter().chain(changes.iter()).cloned().collect();
            crate::fields::shuffle(&mut shuffled, seed);
            prop_assert_eq!(&forward, &run(&shuffled));
            let app = app();
            for field in app.fields.keys() {
                prop_assert_eq!(forward.0.fields.get(field), app.fields.get(field));
            }
        }
    }
}
