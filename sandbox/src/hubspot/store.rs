//! The portal's records: objects with string properties, archive and merge state,
//! associations, and the search index's delayed view of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

/// Object types this emulator serves.
pub const TYPES: [&str; 5] = ["contacts", "companies", "deals", "calls", "notes"];

/// The singular name HubSpot uses in webhook subscription types.
pub fn singular(object_type: &str) -> &'static str {
    match object_type {
        "contacts" => "contact",
        "companies" => "company",
        "deals" => "deal",
        "calls" => "call",
        _ => "note",
    }
}

/// Accepts `contacts` and the object type id `0-1` forms.
pub fn canonical_type(name: &str) -> Option<&'static str> {
    match name {
        "contacts" | "contact" | "0-1" => Some("contacts"),
        "companies" | "company" | "0-2" => Some("companies"),
        "deals" | "deal" | "0-3" => Some("deals"),
        "calls" | "call" | "0-48" => Some("calls"),
        "notes" | "note" | "0-46" => Some("notes"),
        _ => None,
    }
}

/// The modified-date property of a type.
pub fn modified_property(object_type: &str) -> &'static str {
    if object_type == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

/// Default properties a list or get returns when none are asked for.
pub fn default_properties(object_type: &str) -> &'static [&'static str] {
    match object_type {
        "contacts" => &["email", "firstname", "lastname"],
        "companies" => &["name", "domain"],
        "deals" => &["dealname", "amount", "dealstage", "pipeline", "closedate"],
        "calls" => &["hs_timestamp", "hs_call_title", "hs_call_status"],
        _ => &["hs_timestamp", "hs_note_body"],
    }
}

/// The association type ids HubSpot defines from one type to another: the unlabeled
/// one first (what v4 reports for a link), then the primary one where there is one.
/// Empty when HubSpot defines no association between the two.
pub fn association_type_ids(from: &str, to: &str) -> &'static [u32] {
    match (from, to) {
        ("contacts", "companies") => &[279, 1],
        ("companies", "contacts") => &[280, 2],
        ("deals", "contacts") => &[3],
        ("contacts", "deals") => &[4],
        ("deals", "companies") => &[341, 5],
        ("companies", "deals") => &[342, 6],
        ("calls", "contacts") => &[194],
        ("contacts", "calls") => &[193],
        ("calls", "companies") => &[182],
        ("companies", "calls") => &[181],
        ("calls", "deals") => &[206],
        ("deals", "calls") => &[205],
        ("notes", "contacts") => &[202],
        ("contacts", "notes") => &[201],
        ("notes", "companies") => &[190],
        ("companies", "notes") => &[189],
        ("notes", "deals") => &[214],
        ("deals", "notes") => &[213],
        _ => &[],
    }
}

/// The association type id v4 reports for a link from `from` to `to`, if HubSpot
/// defines one.
pub fn association_type_id(from: &str, to: &str) -> Option<u32> {
    association_type_ids(from, to).first().copied()
}

/// The object type an association of `type_id` from `from` points to.
pub fn association_target(from: &str, type_id: u64) -> Option<&'static str> {
    TYPES.into_iter().find(|to| {
        association_type_ids(from, to)
            .iter()
            .any(|id| u64::from(*id) == type_id)
    })
}

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub properties: BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub archived_at: Option<i64>,
    /// Set when this record was merged away: the id that now answers for it.
    pub merged_into: Option<u64>,
    /// What search sees: (visible from, properties, archived), oldest first.
    pub index: Vec<(i64, BTreeMap<String, String>, bool)>,
}

impl Record {
    pub fn to_json(&self, object_type: &str, wanted: &[String]) -> Value {
        let mut props = serde_json::Map::new();
        let always = ["hs_object_id", "createdate", modified_property(object_type)];
        for name in wanted.iter().map(String::as_str).chain(always) {
            let value = self
                .properties
                .get(name)
                .cloned()
                .map_or(Value::Null, Value::String);
            props.insert(name.to_owned(), value);
        }
        let mut v = json!({
            "id": self.id.to_string(),
            "properties": props,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "archived": self.archived_at.is_some(),
        });
        if let Some(at) = self.archived_at {
            v["archivedAt"] = json!(iso(at));
        }
        v
    }

    /// The search index's view at `now`: the newest snapshot already visible.
    pub fn indexed(&self, now: i64) -> Option<(&BTreeMap<String, String>, bool)> {
        self.index
            .iter()
            .rev()
            .find(|(visible, _, _)| *visible <= now)
            .map(|(_, p, archived)| (p, *archived))
    }
}

/// A change the portal makes, which becomes a webhook event.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Created {
        object_type: &'static str,
        id: u64,
    },
    Property {
        object_type: &'static str,
        id: u64,
        name: String,
        value: String,
    },
    Archived {
        object_type: &'static str,
        id: u64,
    },
    Restored {
        object_type: &'static str,
        id: u64,
    },
    Merged {
        object_type: &'static str,
        primary: u64,
        merged: u64,
        new_id: u64,
    },
    Associated {
        from_type: &'static str,
        from: u64,
        to_type: &'static str,
        to: u64,
        removed: bool,
    },
}

/// All records of the portal.
#[derive(Debug, Default)]
pub struct Store {
    pub objects: HashMap<&'static str, BTreeMap<u64, Record>>,
    /// (from type, from id, to type) → to ids.
    pub associations: HashMap<(&'static str, u64, &'static str), BTreeSet<u64>>,
    next_id: u64,
    pub index_lag_ms: i64,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound(String),
    Conflict(String),
    Invalid(String),
}

impl Store {
    pub fn new(index_lag_ms: i64) -> Self {
        Self {
            objects: TYPES.iter().map(|t| (*t, BTreeMap::new())).collect(),
            associations: HashMap::new(),
            next_id: 1000,
            index_lag_ms,
        }
    }

    fn table(&mut self, object_type: &'static str) -> &mut BTreeMap<u64, Record> {
        self.objects.entry(object_type).or_default()
    }

    fn reindex(record: &mut Record, at: i64, lag: i64) {
        record.index.push((
            at + lag,
            record.properties.clone(),
            record.archived_at.is_some(),
        ));
        // Keep only the snapshots that can still matter: the newest visible one on.
        let visible = record.index.iter().rposition(|(v, _, _)| *v <= at);
        if let Some(keep_from) = visible {
            record.index.drain(..keep_from);
        }
    }

    /// Follows merges to the record that answers for `id`.
    pub fn resolve(&self, object_type: &str, mut id: u64) -> Option<&Record> {
        let table = self.objects.get(object_type)?;
        for _ in 0..16 {
            let record = table.get(&id)?;
            match record.merged_into {
                Some(next) => id = next,
                None => return Some(record),
            }
        }
        None
    }

    pub fn live(&self, object_type: &str, id: u64) -> Option<&Record> {
        self.resolve(object_type, id)
            .filter(|r| r.archived_at.is_none())
    }

    pub fn create(
        &mut self,
        object_type: &'static str,
        properties: BTreeMap<String, String>,
        at: i64,
    ) -> (u64, Vec<Change>) {
        self.next_id += 1;
        let id = self.next_id;
        let mut props = properties.clone();
        props.insert("hs_object_id".into(), id.to_string());
        props.insert("createdate".into(), iso(at));
        props.insert(modified_property(object_type).into(), iso(at));
        let mut record = Record {
            id,
            properties: props,
            created_at: at,
            updated_at: at,
            archived_at: None,
            merged_into: None,
            index: Vec::new(),
        };
        Self::reindex(&mut record, at, self.index_lag_ms);
        self.table(object_type).insert(id, record);
        let mut changes = vec![Change::Created { object_type, id }];
        for (name, value) in properties {
            changes.push(Change::Property {
                object_type,
                id,
                name,
                value,
            });
        }
        (id, changes)
    }

    /// Sets properties; a property set to its current value is no change.
    pub fn update(
        &mut self,
        object_type: &'static str,
        id: u64,
        properties: &BTreeMap<String, String>,
        at: i64,
    ) -> Result<(u64, Vec<Change>), StoreError> {
        let id = self.live(object_type, id).map(|r| r.id).ok_or_else(|| {
            StoreError::NotFound(format!(
                "Object not found.  objectId are usually numeric.  {id}"
            ))
        })?;
        let lag = self.index_lag_ms;
        let record = self
            .table(object_type)
            .get_mut(&id)
            .expect("resolved above");
        let mut changes = Vec::new();
        for (name, value) in properties {
            if record.properties.get(name) != Some(value) {
                record.properties.insert(name.clone(), value.clone());
                changes.push(Change::Property {
                    object_type,
                    id,
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        if !changes.is_empty() {
            record.updated_at = at;
            record
                .properties
                .insert(modified_property(object_type).into(), iso(at));
            Self::reindex(record, at, lag);
        }
        Ok((id, changes))
    }

    pub fn archive(&mut self, object_type: &'static str, id: u64, at: i64) -> Vec<Change> {
        let lag = self.index_lag_ms;
        match self.table(object_type).get_mut(&id) {
            Some(r) if r.archived_at.is_none() && r.merged_into.is_none() => {
                r.archived_at = Some(at);
                r.updated_at = at;
                Self::reindex(r, at, lag);
                vec![Change::Archived { object_type, id }]
            }
            _ => Vec::new(),
        }
    }

    pub fn restore(&mut self, object_type: &'static str, id: u64, at: i64) -> Vec<Change> {
        let lag = self.index_lag_ms;
        match self.table(object_type).get_mut(&id) {
            Some(r) if r.archived_at.is_some() => {
                r.archived_at = None;
                r.updated_at = at;
                r.properties
                    .insert(modified_property(object_type).into(), iso(at));
                Self::reindex(r, at, lag);
                vec![Change::Restored { object_type, id }]
            }
            _ => Vec::new(),
        }
    }

    /// Merges `merged` into `primary`: a new record with a new id takes the primary's
    /// values (the merged record's fill the gaps) and both old ids resolve to it.
    pub fn merge(
        &mut self,
        object_type: &'static str,
        primary: u64,
        merged: u64,
        at: i64,
    ) -> Result<(u64, Vec<Change>), StoreError> {
        let p = self.live(object_type, primary).cloned();
        let m = self.live(object_type, merged).cloned();
        let (Some(p), Some(m)) = (p, m) else {
            return Err(StoreError::NotFound("Object not found".into()));
        };
        if p.id == m.id {
            return Err(StoreError::Invalid(
                "Cannot merge an object with itself".into(),
            ));
        }
        let mut props = m.properties.clone();
        props.extend(p.properties.clone());
        for key in ["hs_object_id", "createdate", modified_property(object_type)] {
            props.remove(key);
        }
        // As HubSpot does: the survivor lists every id merged into it.
        let mut merged_ids: Vec<String> = [&p, &m]
            .iter()
            .flat_map(|r| {
                let earlier = r
                    .properties
                    .get("hs_merged_object_ids")
                    .cloned()
                    .unwrap_or_default();
                earlier
                    .split(';')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .chain(std::iter::once(r.id.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        merged_ids.sort();
        merged_ids.dedup();
        props.insert("hs_merged_object_ids".into(), merged_ids.join(";"));
        let (new_id, _) = self.create(object_type, props, at);
        for old in [p.id, m.id] {
            if let Some(r) = self.table(object_type).get_mut(&old) {
                r.merged_into = Some(new_id);
                r.index.clear();
            }
        }
        let mut moved: Vec<(&'static str, u64)> = Vec::new();
        for old in [p.id, m.id] {
            for to_type in TYPES {
                let linked = self.associations.get(&(object_type, old, to_type));
                for to in linked.into_iter().flatten() {
                    // Links to records since merged away are dead already.
                    if self.resolve(to_type, *to).is_some_and(|r| r.id == *to) {
                        moved.push((to_type, *to));
                    }
                }
            }
        }
        let mut changes = vec![Change::Merged {
            object_type,
            primary: p.id,
            merged: m.id,
            new_id,
        }];
        // Links follow the survivor, each announced as an associationChange.
        for (to_type, to) in moved {
            changes.extend(self.associate(object_type, new_id, to_type, to));
        }
        Ok((new_id, changes))
    }

    /// Links two records both ways; returns the changes (none when already linked).
    pub fn associate(
        &mut self,
        from_type: &'static str,
        from: u64,
        to_type: &'static str,
        to: u64,
    ) -> Vec<Change> {
        let fresh = self
            .associations
            .entry((from_type, from, to_type))
            .or_default()
            .insert(to);
        self.associations
            .entry((to_type, to, from_type))
            .or_default()
            .insert(from);
        if fresh {
            vec![Change::Associated {
                from_type,
                from,
                to_type,
                to,
                removed: false,
            }]
        } else {
            Vec::new()
        }
    }

    pub fn associated(&self, from_type: &str, from: u64, to_type: &str) -> Vec<u64> {
        let Some(from_type) = canonical_type(from_type) else {
            return Vec::new();
        };
        let Some(to_type) = canonical_type(to_type) else {
            return Vec::new();
        };
        self.associations
            .get(&(from_type, from, to_type))
            .map(|s| {
                s.iter()
                    .copied()
                    .filter(|id| self.live(to_type, *id).is_some_and(|r| r.id == *id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The live record whose `property` equals `value`.
    pub fn find_by(&self, object_type: &str, property: &str, value: &str) -> Option<&Record> {
        self.objects.get(object_type)?.values().find(|r| {
            r.archived_at.is_none()
                && r.merged_into.is_none()
                && r.properties.get(property).is_some_and(|v| v == value)
        })
    }
}
