//! Per-field versioned values: the heart of order-independent projection.
//!
//! Every field of a projected record remembers the version of the change that set it:
//! the provider's time of the change, then the event id as a tie-break. A change is
//! applied to a field only when its version is newer than the one stored, so any order
//! of the same events, with any duplicates, ends in the same state, and a redelivery is
//! a no-op. Postgres applies the same rule in `crm_merge_fields` (see the migrations);
//! versions are strings that compare byte-wise (`COLLATE "C"` there) in the same order
//! as `(time, event id)`.
//!
//! Pseudo-fields whose names start with `$` carry record state: `$deleted` (a
//! tombstone, revived by a newer restore) and `$merged_into` (the surviving id after a
//! merge). Provider field names never start with `$`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tombstone pseudo-field.
pub const DELETED: &str = "$deleted";
/// Merge pseudo-field: the id of the record that survived.
pub const MERGED_INTO: &str = "$merged_into";

/// The version of one change: `(time in ms, event id)`, as a string ordered byte-wise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(String);

impl Version {
    pub fn new(time: DateTime<Utc>, event_id: &str) -> Self {
        let ms = time.timestamp_millis().max(0);
        Self(format!("{ms:016}:{event_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The time part of the version.
    pub fn time(&self) -> DateTime<Utc> {
        let ms = self
            .0
            .get(..16)
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or(0);
        Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
    }
}

/// Field values with the version that set each one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldSet {
    pub fields: BTreeMap<String, Value>,
    pub versions: BTreeMap<String, Version>,
}

impl FieldSet {
    /// Sets `field` to `value` unless a newer (or the same) change already set it.
    /// Returns whether the value was taken.
    pub fn set(&mut self, field: &str, value: Value, version: &Version) -> bool {
        if self.versions.get(field).is_some_and(|v| v >= version) {
            return false;
        }
        self.fields.insert(field.to_owned(), value);
        self.versions.insert(field.to_owned(), version.clone());
        true
    }

    /// Applies every field of `other` under the same rule as [`FieldSet::set`].
    pub fn merge(&mut self, other: &FieldSet) {
        for (field, version) in &other.versions {
            let value = other.fields.get(field).cloned().unwrap_or(Value::Null);
            self.set(field, value, version);
        }
    }

    /// The newest change time of any field.
    pub fn latest_time(&self) -> Option<DateTime<Utc>> {
        self.versions.values().max().map(Version::time)
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    pub fn is_deleted(&self) -> bool {
        self.fields.get(DELETED) == Some(&Value::Bool(true))
    }
}

/// Shuffles `items` by `seed` (a Fisher–Yates walk over an LCG), for the property
/// tests that apply the same changes in another order.
#[cfg(test)]
pub(crate) fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed;
    for i in (1..items.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (x >> 33) as usize % (i + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn v(ms: i64, id: &str) -> Version {
        Version::new(Utc.timestamp_millis_opt(ms).unwrap(), id)
    }

    #[test]
    fn newer_changes_win_and_older_ones_are_ignored() {
        let mut s = FieldSet::default();
        assert!(s.set("email", json!("new@x"), &v(2000, "b")));
        assert!(!s.set("email", json!("old@x"), &v(1000, "z")));
        assert!(!s.set("email", json!("dup@x"), &v(2000, "b")));
        assert!(s.set("email", json!("tie@x"), &v(2000, "c")));
        assert_eq!(s.fields["email"], json!("tie@x"));
    }

    #[test]
    fn versions_order_by_time_before_event_id() {
        assert!(v(999, "zzz") < v(1000, "aaa"));
        assert!(v(10_000, "a") > v(9_999, "b"));
        assert_eq!(
            v(1_564_113_600_000, "e").time().timestamp_millis(),
            1_564_113_600_000
        );
    }

    fn change() -> impl Strategy<Value = (String, i64, String, Option<String>)> {
        (
            prop::sample::select(vec!["email", "first_name", DELETED]),
            0i64..20,
            "[a-c]",
            proptest::option::of("[xyz]"),
        )
            .prop_map(|(f, t, e, val)| (f.to_owned(), t, e, val))
    }

    proptest! {
        #[test]
        fn merge_is_order_independent_and_idempotent(
            changes in prop::collection::vec(change(), 0..30),
            seed in any::<u64>(),
        ) {
            // One event id names one change: the digest in real ids guarantees it.
            let sets: Vec<FieldSet> = changes.iter().map(|(f, t, e, val)| {
                let mut s = FieldSet::default();
                let id = format!("{e}-{f}-{val:?}");
                s.set(f, val.clone().map(Value::from).unwrap_or(Value::Null), &v(*t, &id));
                s
            }).collect();
            let mut forward = FieldSet::default();
            for s in &sets { forward.merge(s); }
            let mut shuffled = sets.clone();
            shuffle(&mut shuffled, seed);
            let mut other = FieldSet::default();
            for s in shuffled.iter().chain(sets.iter()) { other.merge(s); }
            prop_assert_eq!(forward, other);
        }
    }
}
