//! The rules for fields both sides may write, over the field's edits.
//!
//! A field's state is the set of edits made to it, each with its side ([`Source`]),
//! version and value. Recording an edit is a set insertion, so the same edits in any
//! order, with any duplicates, give the same state, and every rule is a function of
//! that set: order-independent and idempotent by construction.
//!
//! - **Contacts and companies: the CRM is the authority** ([`Rule::CrmWins`]). The
//!   newest CRM value stands; an app value counts only for a field the CRM has never
//!   stated.
//! - **Deals: a conservative merge that loses nothing** ([`Rule::Conservative`]).
//!   - The newest statement wins, whichever side made it.
//!   - An empty value is a statement only when it was an explicit clear (a user
//!     emptied the field). An empty the event merely carried (a snapshot that did
//!     not read the field) never replaces a value.
//!   - When both sides changed the field since they were last in step (both held
//!     the same value), the losing side's latest value is a [`Conflict`], kept
//!     beside the winner.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{same_value, Conflict, Source};
use crate::fields::Version;

/// One side's edit of one field.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub source: Source,
    pub version: Version,
    pub value: Value,
    /// For an empty value: whether the field was cleared on purpose.
    pub explicit: bool,
}

/// Which rule a field follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Contacts and companies.
    CrmWins,
    /// Deals.
    Conservative,
}

/// A field's edits from both sides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldEdits {
    edits: BTreeMap<(Source, Version), (Value, bool)>,
}

/// What a field comes to: its value, the edit it came from, and (deals) the value
/// kept out.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub value: Value,
    pub source: Source,
    pub version: Version,
    pub conflict: Option<Conflict>,
}

/// Empty as a CRM shows it: null, blank text, an empty list.
pub fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl FieldEdits {
    /// Records an edit; recording it again changes nothing. (One version is one
    /// event, so one value; should two values ever share one, the greater by its
    /// text is kept, whatever the order.)
    pub fn record(&mut self, edit: Edit) {
        let new = (edit.value, edit.explicit);
        self.edits
            .entry((edit.source, edit.version))
            .and_modify(|old| {
                if (new.0.to_string(), new.1) > (old.0.to_string(), old.1) {
                    *old = new.clone();
                }
            })
            .or_insert_with(|| new.clone());
    }

    fn is_statement(e: &Edit) -> bool {
        e.explicit || !is_empty(&e.value)
    }

    /// Every edit recorded.
    pub fn iter(&self) -> impl Iterator<Item = Edit> + '_ {
        self.edits
            .iter()
            .map(|((source, version), (value, explicit))| Edit {
                source: *source,
                version: version.clone(),
                value: value.clone(),
                explicit: *explicit,
            })
    }

    /// Edits that state something: a value, or an explicit clear.
    fn statements(&self) -> impl Iterator<Item = Edit> + '_ {
        self.iter().filter(Self::is_statement)
    }

    /// The latest statement of `side` at or before `at` (all of them without `at`).
    fn latest(&self, side: Source, at: Option<&Version>) -> Option<Edit> {
        self.statements()
            .filter(|e| e.source == side && at.is_none_or(|at| e.version <= *at))
            .max_by(|a, b| a.version.cmp(&b.version))
    }

    /// The newest version at which both sides held the same value.
    fn last_in_step(&self) -> Option<Version> {
        self.statements()
            .map(|e| e.version)
            .filter(|v| {
                match (
                    self.latest(Source::App, Some(v)),
                    self.latest(Source::Crm, Some(v)),
                ) {
                    (Some(a), Some(c)) => same_value(&a.value, &c.value),
                    _ => false,
                }
            })
            .max()
    }

    /// The value of the field `name` under `rule`; `None` before any edit.
    pub fn resolve(&self, name: &str, rule: Rule) -> Option<Resolved> {
        let winner = match rule {
            // The newest CRM statement; else the newest app statement; else the
            // newest carried empty.
            Rule::CrmWins => self.iter().max_by(|a, b| {
                let key = |e: &Edit| {
                    let stated = Self::is_statement(e);
                    (stated && e.source == Source::Crm, stated, e.version.clone())
                };
                key(a).cmp(&key(b))
            })?,
            Rule::Conservative => self
                .statements()
                .max_by(|a, b| a.version.cmp(&b.version))
                // Only empties the events carried: the newest of them.
                .or_else(|| self.iter().max_by(|a, b| a.version.cmp(&b.version)))?,
        };
        let conflict = match rule {
            Rule::CrmWins => None,
            Rule::Conservative => self.conflict(name, &winner),
        };
        Some(Resolved {
            value: winner.value,
            source: winner.source,
            version: winner.version,
            conflict,
        })
    }

    fn conflict(&self, name: &str, winner: &Edit) -> Option<Conflict> {
        let other = match winner.source {
            Source::App => Source::Crm,
            Source::Crm => Source::App,
        };
        let loser = self.latest(other, None)?;
        if same_value(&loser.value, &winner.value) {
            return None;
        }
        let in_step = self.last_in_step();
        // Both changed since they were last in step (or never were).
        let changed = |e: &Edit| in_step.as_ref().is_none_or(|v| e.version > *v);
        (changed(&loser) && changed(winner)).then(|| Conflict {
            field: name.to_owned(),
            kept: winner.value.clone(),
            kept_source: winner.source,
            kept_version: Some(winner.version.clone()),
            lost: loser.value,
            lost_source: loser.source,
            lost_version: loser.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::json;

    fn v(ms: i64) -> Version {
        Version::new(Utc.timestamp_millis_opt(ms).unwrap(), &format!("e{ms}"))
    }

    fn edit(source: Source, ms: i64, value: Value) -> Edit {
        Edit {
            source,
            version: v(ms),
            value,
            explicit: false,
        }
    }

    fn clear(source: Source, ms: i64) -> Edit {
        Edit {
            explicit: true,
            ..edit(source, ms, Value::Null)
        }
    }

    use Source::{App, Crm};

    fn field(edits: &[Edit]) -> FieldEdits {
        let mut f = FieldEdits::default();
        for e in edits {
            f.record(e.clone());
        }
        f
    }

    #[test]
    fn deals_the_table_of_cases() {
        // (case, edits, value, conflict's lost value)
        let cases: Vec<(&str, Vec<Edit>, Value, Option<Value>)> = vec![
            (
                "CRM edits alone: the newest wins",
                vec![edit(Crm, 1, json!(100)), edit(Crm, 2, json!(200))],
                json!(200),
                None,
            ),
            (
                "in step, then the CRM changes it: no conflict",
                vec![
                    edit(App, 1, json!(100)),
                    edit(Crm, 2, json!(100)),
                    edit(Crm, 3, json!(200)),
                ],
                json!(200),
                None,
            ),
            (
                "both changed since in step: the newer wins, the other is kept",
                vec![
                    edit(App, 1, json!(100)),
                    edit(Crm, 2, json!(100)),
                    edit(Crm, 3, json!(200)),
                    edit(App, 4, json!(150)),
                ],
                json!(150),
                Some(json!(200)),
            ),
            (
                "never in step: both are changes",
                vec![edit(Crm, 1, json!("Q3")), edit(App, 2, json!("Q4"))],
                json!("Q4"),
                Some(json!("Q3")),
            ),
            (
                "an empty the event merely carried replaces nothing",
                vec![edit(App, 1, json!(150)), edit(Crm, 5, json!(""))],
                json!(150),
                None,
            ),
            (
                "an explicit clear does, and the other side's change is kept",
                vec![
                    edit(App, 1, json!(100)),
                    edit(Crm, 2, json!(100)),
                    edit(App, 4, json!(150)),
                    clear(Crm, 6),
                ],
                json!(null),
                Some(json!(150)),
            ),
            (
                "only empties: empty",
                vec![edit(Crm, 1, json!(null)), edit(Crm, 2, json!(""))],
                json!(""),
                None,
            ),
            (
                "the same value on both sides is no conflict",
                vec![edit(Crm, 1, json!("60")), edit(App, 2, json!(60))],
                json!(60),
                None,
            ),
        ];
        for (case, edits, want, lost) in cases {
            let got = field(&edits).resolve("amount", Rule::Conservative).unwrap();
            assert_eq!(got.value, want, "{case}");
            assert_eq!(
                got.conflict.as_ref().map(|c| c.lost.clone()),
                lost,
                "{case}"
            );
            if let Some(c) = got.conflict {
                assert_eq!(c.kept, got.value, "{case}");
                assert_ne!(c.kept_source, c.lost_source, "{case}");
            }
        }
    }

    #[test]
    fn contacts_the_crm_wins() {
        let f = field(&[
            edit(Crm, 1, json!("a@x.com")),
            edit(App, 9, json!("b@x.com")),
        ]);
        let got = f.resolve("email", Rule::CrmWins).unwrap();
        assert_eq!((got.value, got.source), (json!("a@x.com"), Crm));
        assert_eq!(got.conflict, None);
        let f = field(&[edit(App, 9, json!("b@x.com"))]);
        assert_eq!(
            f.resolve("email", Rule::CrmWins).unwrap().value,
            json!("b@x.com"),
            "an app value counts where the CRM has said nothing"
        );
        let f = field(&[edit(App, 1, json!("b@x.com")), edit(Crm, 2, json!(""))]);
        assert_eq!(
            f.resolve("email", Rule::CrmWins).unwrap().value,
            json!("b@x.com"),
            "an empty the CRM's event merely carried states nothing"
        );
        let f = field(&[edit(Crm, 1, json!("a@x.com")), clear(Crm, 2)]);
        assert_eq!(
            f.resolve("email", Rule::CrmWins).unwrap().value,
            json!(null)
        );
        assert_eq!(FieldEdits::default().resolve("email", Rule::CrmWins), None);
    }

    fn any_edit() -> impl Strategy<Value = Edit> {
        (
            prop::sample::select(vec![App, Crm]),
            0i64..40,
            prop::sample::select(vec![
                json!(100),
                json!(200),
                json!("Q3"),
                json!(null),
                json!(""),
            ]),
            any::<bool>(),
        )
            .prop_map(|(source, ms, value, explicit)| Edit {
                source,
                // Ids mostly name one change; sometimes two values share one, which
                // must not make the order matter either.
                version: Version::new(
                    Utc.timestamp_millis_opt(ms).unwrap(),
                    &if ms % 7 == 0 {
                        format!("{source:?}")
                    } else {
                        format!("{source:?}-{value}-{explicit}")
                    },
                ),
                value,
                explicit,
            })
    }

    proptest! {
        /// Any order, with repeats, gives the same value and conflict, for both rules.
        #[test]
        fn order_and_repeats_change_nothing(
            edits in prop::collection::vec(any_edit(), 1..16),
            seed in any::<u64>(),
        ) {
            let forward = field(&edits);
            let mut shuffled: Vec<Edit> = edits.iter().chain(edits.iter()).cloned().collect();
            crate::fields::shuffle(&mut shuffled, seed);
            let other = field(&shuffled);
            for rule in [Rule::CrmWins, Rule::Conservative] {
                prop_assert_eq!(forward.resolve("f", rule), other.resolve("f", rule));
            }
        }

        /// Deals lose nothing: the newest statement stands; a value is emptied only by
        /// an explicit clear newer than it; and each side's latest value is the
        /// field's, or kept as a conflict, or one both sides held before a newer edit
        /// replaced it.
        #[test]
        fn deals_lose_nothing(edits in prop::collection::vec(any_edit(), 1..16)) {
            let f = field(&edits);
            let got = f.resolve("amount", Rule::Conservative).unwrap();
            // What was recorded (of two values sharing a version, one is kept).
            let edits: Vec<Edit> = f.iter().collect();
            let statements: Vec<&Edit> =
                edits.iter().filter(|e| e.explicit || !is_empty(&e.value)).collect();
            if let Some(newest) = statements.iter().max_by(|a, b| a.version.cmp(&b.version)) {
                prop_assert_eq!(&got.value, &newest.value);
            }
            let newest_value = edits
                .iter()
                .filter(|e| !is_empty(&e.value))
                .map(|e| &e.version)
                .max();
            if let Some(newest_value) = newest_value {
                if is_empty(&got.value) {
                    prop_assert!(
                        edits.iter().any(|e| e.explicit && is_empty(&e.value) && e.version > *newest_value),
                        "emptied without a newer explicit clear"
                    );
                }
            }
            for side in [App, Crm] {
                let Some(latest) = statements
                    .iter()
                    .filter(|e| e.source == side)
                    .max_by(|a, b| a.version.cmp(&b.version))
                else {
                    continue;
                };
                let kept = same_value(&latest.value, &got.value)
                    || got.conflict.as_ref().is_some_and(|c| same_value(&c.lost, &latest.value));
                let agreed = statements.iter().any(|e| {
                    e.source != side
                        && same_value(&e.value, &latest.value)
                        && f.last_in_step().is_some_and(|s| latest.version <= s)
                });
                prop_assert!(kept || agreed, "{side:?}'s {} was lost: {got:?}", latest.value);
            }
        }
    }
}
