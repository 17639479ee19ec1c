//! The org's records: typed values per module layout, the recycle bin, users and the
//! id sequence. Times are kept in milliseconds, as Zoho keeps them, and shown to the
//! second in the org's time zone (IST, `+05:30`), so a record changed within the
//! second named by `If-Modified-Since` is still "modified since".

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, Utc};

use super::schema::{stage_probability, Module};

/// The org's time zone: every date-time Zoho answers carries it.
pub const ORG_OFFSET_SECS: i32 = 5 * 3600 + 30 * 60;

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `2024-05-01T10:00:00+05:30`.
pub fn format_time(ms: i64) -> String {
    let offset = FixedOffset::east_opt(ORG_OFFSET_SECS).expect("a valid offset");
    DateTime::from_timestamp_millis(ms.div_euclid(1000) * 1000)
        .unwrap_or_default()
        .with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// An ISO 8601 date-time with an offset, in milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}

/// A stored field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Decimal(f64),
    Bool(bool),
    Date(NaiveDate),
    /// Milliseconds since the epoch.
    DateTime(i64),
    Lookup(u64),
    ModuleLookup(Module, u64),
    Multi(Vec<String>),
}

impl Value {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A live record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: u64,
    pub created: i64,
    pub modified: i64,
    pub created_by: u64,
    pub modified_by: u64,
    pub owner: u64,
    /// Indexed as the module's layout fields.
    pub values: Vec<Option<Value>>,
}

impl Record {
    pub fn value(&self, index: usize) -> Option<&Value> {
        self.values.get(index).and_then(Option::as_ref)
    }

    pub fn named(&self, module: Module, name: &str) -> Option<&Value> {
        module.field_index(name).and_then(|i| self.value(i))
    }

    pub fn text(&self, module: Module, name: &str) -> Option<&str> {
        self.named(module, name).and_then(Value::as_text)
    }

    /// What Zoho shows as the record's name.
    pub fn display_name(&self, module: Module) -> Option<String> {
        match module.display_field() {
            "Full_Name" => full_name(
                self.text(module, "First_Name"),
                self.text(module, "Last_Name"),
            ),
            field => self.text(module, field).map(str::to_owned),
        }
    }
}

pub fn full_name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    match (first.filter(|s| !s.is_empty()), last) {
        (Some(first), Some(last)) => Some(format!("{first} {last}")),
        (None, Some(last)) => Some(last.to_owned()),
        (Some(first), None) => Some(first.to_owned()),
        (None, None) => None,
    }
}

/// A CRM user (records' owner, creator and modifier).
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
}

/// A record in the recycle bin (`permanent` once the bin was emptied).
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub id: u64,
    pub display_name: Option<String>,
    pub deleted_time: i64,
    pub deleted_by: Option<u64>,
    pub created_by: Option<u64>,
    pub permanent: bool,
}

/// One module's records.
#[derive(Debug, Default)]
pub struct Table {
    pub records: BTreeMap<u64, Record>,
    pub deleted: Vec<Deleted>,
}

/// What happened to a record, for notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// One change to one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub module: Module,
    pub operation: Operation,
    pub id: u64,
    /// Fields whose value changed (updates only).
    pub fields: Vec<&'static str>,
}

/// All of the org's data.
#[derive(Debug)]
pub struct Store {
    tables: Vec<Table>,
    pub users: Vec<User>,
    /// Ids look like Zoho's: a 7-digit org part, then a 12-digit sequence.
    pub id_prefix: u64,
    next_seq: u64,
}

/// The API user (whose token the credentials carry) and a colleague working in the
/// CRM's UI, who makes the mutation driver's changes.
pub const API_USER: usize = 0;
pub const UI_USER: usize = 1;

impl Store {
    pub fn new(seed: u64) -> Self {
        let org_part = 1_000_000 + seed.wrapping_mul(2_654_435_761) % 9_000_000;
        let mut store = Self {
            tables: Module::ALL.iter().map(|_| Table::default()).collect(),
            users: Vec::new(),
            id_prefix: org_part * 1_000_000_000_000,
            next_seq: 225_013,
        };
        for (name, email) in [
            ("Patricia Boyle", "patricia.boyle@zoho-sandbox.example.com"),
            ("Sam Mendes", "sam.mendes@zoho-sandbox.example.com"),
        ] {
            let id = store.next_id();
            store.users.push(User {
                id,
                name: name.into(),
                email: email.into(),
            });
        }
        store.next_seq = 400_001;
        store
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.id_prefix + self.next_seq;
        self.next_seq += 1;
        id
    }

    pub fn table(&self, module: Module) -> &Table {
        &self.tables[module.index()]
    }

    fn table_mut(&mut self, module: Module) -> &mut Table {
        &mut self.tables[module.index()]
    }

    pub fn record(&self, module: Module, id: u64) -> Option<&Record> {
        self.table(module).records.get(&id)
    }

    pub fn user(&self, id: u64) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    pub fn user_id(&self, index: usize) -> u64 {
        self.users[index].id
    }

    /// The name a lookup to `id` shows: the live record's, or the recycle bin's.
    pub fn lookup_name(&self, module: Module, id: u64) -> Option<String> {
        match self.record(module, id) {
            Some(r) => r.display_name(module),
            None => self
                .table(module)
                .deleted
                .iter()
                .find(|d| d.id == id)
                .and_then(|d| d.display_name.clone()),
        }
    }

    /// Adds a record; Zoho fills a deal's probability from its stage.
    pub fn insert(
        &mut self,
        module: Module,
        values: Vec<Option<Value>>,
        owner: u64,
        by: u64,
        at: i64,
    ) -> u64 {
        self.insert_at(module, values, owner, by, at, at)
    }

    /// Adds a record created and last modified at the given times (seeding).
    pub fn insert_at(
        &mut self,
        module: Module,
        mut values: Vec<Option<Value>>,
        owner: u64,
        by: u64,
        created: i64,
        modified: i64,
    ) -> u64 {
        values.resize(module.fields().len(), None);
        fill_probability(module, &mut values, &[]);
        let id = self.next_id();
        let record = Record {
            id,
            created,
            modified,
            created_by: by,
            modified_by: by,
            owner,
            values,
        };
        self.table_mut(module).records.insert(id, record);
        id
    }

    /// Sets fields of a live record and bumps `Modified_Time` (even when nothing
    /// changed, as Zoho does). Answers the fields whose value changed, or `None` when
    /// there is no such record.
    pub fn update(
        &mut self,
        module: Module,
        id: u64,
        set: &[(usize, Option<Value>)],
        owner: Option<u64>,
        by: u64,
        at: i64,
    ) -> Option<Vec<&'static str>> {
        let record = self.table_mut(module).records.get_mut(&id)?;
        let mut changed = Vec::new();
        for (index, value) in set {
            if record.values[*index] != *value {
                record.values[*index] = value.clone();
                changed.push(module.field(*index).name);
            }
        }
        let explicit: Vec<usize> = set.iter().map(|(i, _)| *i).collect();
        if changed.contains(&"Stage") && fill_probability(module, &mut record.values, &explicit) {
            changed.push("Probability");
        }
        if let Some(owner) = owner.filter(|o| *o != record.owner) {
            record.owner = owner;
            changed.push("Owner");
        }
        record.modified = at.max(record.modified);
        record.modified_by = by;
        Some(changed)
    }

    /// Moves a live record to the recycle bin.
    pub fn delete(&mut self, module: Module, id: u64, by: u64, at: i64) -> bool {
        let Some(record) = self.table_mut(module).records.remove(&id) else {
            return false;
        };
        let deleted = Deleted {
            id,
            display_name: record.display_name(module),
            deleted_time: at,
            deleted_by: Some(by),
            created_by: Some(record.created_by),
            permanent: false,
        };
        self.table_mut(module).deleted.push(deleted);
        true
    }

    /// Empties the recycle bin: its records become permanently deleted, which Zoho
    /// reports without name or users.
    pub fn empty_recycle_bin(&mut self) {
        for table in &mut self.tables {
            for d in table.deleted.iter_mut().filter(|d| !d.permanent) {
                d.permanent = true;
                d.display_name = None;
                d.deleted_by = None;
                d.created_by = None;
            }
        }
    }
}

/// Sets `Probability` from `Stage` unless the caller set it; answers whether it did.
fn fill_probability(module: Module, values: &mut [Option<Value>], explicit: &[usize]) -> bool {
    if module != Module::Deals {
        return false;
    }
    let (Some(stage), Some(prob)) = (
        module.field_index("Stage"),
        module.field_index("Probability"),
    ) else {
        return false;
    };
    if explicit.contains(&prob) || (explicit.is_empty() && values[prob].is_some()) {
        return false;
    }
    let Some(p) = values[stage]
        .as_ref()
        .and_then(Value::as_text)
        .and_then(stage_probability)
    else {
        return false;
    };
    let new = Some(Value::Int(p));
    let changed = values[prob] != new;
    values[prob] = new;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_the_org_zone_to_the_second() {
        let ms = parse_time("2024-05-01T04:30:00.750Z").unwrap();
        assert_eq!(format_time(ms), "2024-05-01T10:00:00+05:30");
        assert_eq!(parse_time("2024-05-01T10:00:00+05:30"), Some(ms - 750));
        assert_eq!(parse_time("2024-05-01 10:00"), None);
    }

    #[test]
    fn a_stage_change_sets_the_probability_unless_given() {
        let mut store = Store::new(1);
        let m = Module::Deals;
        let stage = m.field_index("Stage").unwrap();
        let prob = m.field_index("Probability").unwrap();
        let mut values = vec![None; m.fields().len()];
        values[stage] = Some(Value::Text("Qualification".into()));
        let id = store.insert(m, values, 1, 1, 0);
        assert_eq!(
            store.record(m, id).unwrap().value(prob),
            Some(&Value::Int(10))
        );
        let changed = store
            .update(
                m,
                id,
                &[(stage, Some(Value::Text("Closed Won".into())))],
                None,
                1,
                5,
            )
            .unwrap();
        assert_eq!(changed, vec!["Stage", "Probability"]);
        assert_eq!(
            store.record(m, id).unwrap().value(prob),
            Some(&Value::Int(100))
        );
        store.update(
            m,
            id,
            &[
                (stage, Some(Value::Text("Qualification".into()))),
                (prob, Some(Value::Int(55))),
            ],
            None,
            1,
            6,
        );
        assert_eq!(
            store.record(m, id).unwrap().value(prob),
            Some(&Value::Int(55))
        );
    }
}
