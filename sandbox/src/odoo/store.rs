//! The database: committed rows of every model, and the ORM's rules for reading,
//! searching and writing them.
//!
//! Odoo facts kept here:
//! - every write stamps `write_date` (and `write_uid`) with the transaction's start,
//!   even when no value changes;
//! - `read` of a deleted id silently leaves it out; `write` on one raises
//!   `MissingError`; `unlink` of one is a no-op;
//! - `unlink` leaves no tombstone; a `mail.thread` record takes its activities and
//!   messages with it; many2one fields pointing at it become empty the way
//!   `ON DELETE SET NULL` does it, *without* touching those rows' `write_date`;
//! - numbers read as `0`/`0.0` when empty, everything else as `false`; many2one as
//!   `[id, display_name]`; datetimes as `YYYY-MM-DD HH:MM:SS` (the microseconds stay
//!   in the database);
//! - plain text written to an html field is escaped and wrapped in `<p>`, as the
//!   sanitizer does;
//! - a `crm.lead` whose customer changes takes the customer's email and phone unless
//!   the same write sets them; moving it to a won stage sets probability 100.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::clock;
use super::domain::{self, Domain, Leaf};
use super::errors::OdooError;
use super::models::{self, Initial, Kind, Model};
use super::order::{self, Key};

/// Who acts, and when their transaction started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env {
    pub uid: i64,
    pub now: DateTime<Utc>,
}

impl Env {
    fn stamp(&self) -> String {
        clock::stored(self.now)
    }

    fn today(&self) -> String {
        clock::date(self.now)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// One value per field of the model, in stored form (computed fields stay null).
    pub vals: Vec<Value>,
    /// Position in the heap: where a sequential scan meets this row.
    heap: u64,
}

#[derive(Debug)]
struct Table {
    model: &'static Model,
    rows: BTreeMap<i64, Row>,
    next_id: i64,
}

#[derive(Debug)]
pub(crate) struct Store {
    major: u32,
    tables: HashMap<&'static str, Table>,
    heap: u64,
}

fn invalid_field(model: &Model, name: &str) -> OdooError {
    OdooError::value_error(format!("Invalid field '{name}' on model '{}'", model.name))
}

pub(crate) fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// What the html sanitizer makes of a written value: markup stays, text is wrapped.
fn html(text: &str) -> String {
    if text.trim_start().starts_with('<') {
        return text.to_owned();
    }
    format!("<p>{}</p>", escape_html(text).replace('\n', "<br>"))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(true) => true,
    }
}

impl Store {
    /// An empty database of Odoo `major`.
    pub(crate) fn new(major: u32) -> Self {
        let tables = models::registry(major)
            .iter()
            .map(|m| {
                (
                    m.name,
                    Table {
                        model: m,
                        rows: BTreeMap::new(),
                        next_id: 1,
                    },
                )
            })
            .collect();
        Self {
            major,
            tables,
            heap: 0,
        }
    }

    /// Looks a model up, answering as `execute_kw` does for an unknown one.
    pub(crate) fn model(&self, name: &str) -> Result<&'static Model, OdooError> {
        models::model_in(self.major, name)
            .ok_or_else(|| OdooError::user_error(format!("Object {name} doesn't exist")))
    }

    fn table(&self, model: &str) -> &Table {
        self.tables.get(model).expect("every model has a table")
    }

    fn table_mut(&mut self, model: &str) -> &mut Table {
        self.tables.get_mut(model).expect("every model has a table")
    }

    pub(crate) fn row(&self, model: &str, id: i64) -> Option<&Row> {
        self.table(model).rows.get(&id)
    }

    pub(crate) fn exists(&self, model: &str, id: i64) -> bool {
        self.row(model, id).is_some()
    }

    /// Every committed id, archived ones included.
    pub(crate) fn ids(&self, model: &str) -> Vec<i64> {
        self.tables
            .get(model)
            .map(|t| t.rows.keys().copied().collect())
            .unwrap_or_default()
    }

    /// An existing id of at least `low`: the first at or after the point `fraction`
    /// of the way from `low` to the highest id.
    pub(crate) fn id_near(&self, model: &str, low: i64, fraction: f64) -> Option<i64> {
        let rows = &self.table(model).rows;
        let high = *rows.keys().next_back()?;
        if high < low {
            return None;
        }
        let at = low + ((high - low) as f64 * fraction) as i64;
        rows.range(at..)
            .next()
            .or_else(|| rows.range(low..).next())
            .map(|(id, _)| *id)
    }

    pub(crate) fn stored(&self, model: &str, id: i64, field: &str) -> Value {
        let t = self.table(model);
        match (t.rows.get(&id), t.model.idx(field)) {
            (Some(row), Some(i)) => row.vals[i].clone(),
            _ => Value::Null,
        }
    }

    pub(crate) fn display_name(&self, model: &Model, row: &Row) -> String {
        let text = |field: &str| {
            model
                .idx(field)
                .and_then(|i| row.vals[i].as_str())
                .unwrap_or("")
                .to_owned()
        };
        match model.name {
            "res.partner" => {
                let name = text("name");
                let company = row.vals[model.magic("is_company")] == Value::Bool(true);
                let parent = row.vals[model.magic("parent_id")]
                    .as_i64()
                    .and_then(|p| self.row("res.partner", p))
                    .and_then(|p| p.vals[model.magic("name")].as_str().map(str::to_owned));
                match parent {
                    Some(parent) if !company => format!("{parent}, {name}"),
                    _ => name,
                }
            }
            "mail.activity" => {
                let summary = text("summary");
                if !summary.is_empty() {
                    return summary;
                }
                row.vals[model.magic("activity_type_id")]
                    .as_i64()
                    .and_then(|t| {
                        self.stored("mail.activity.type", t, "name")
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_default()
            }
            "mail.message" => {
                let subject = text("subject");
                if subject.is_empty() {
                    text("record_name")
                } else {
                    subject
                }
            }
            _ => text("name"),
        }
    }

    fn display_of(&self, model: &str, id: i64) -> Option<String> {
        let t = self.table(model);
        t.rows.get(&id).map(|r| self.display_name(t.model, r))
    }

    /// A field's value in stored form, computing the computed ones.
    fn value(&self, model: &Model, row: &Row, idx: usize, env: &Env) -> Value {
        let field = &model.fields[idx];
        if !field.computed {
            return row.vals[idx].clone();
        }
        match field.name {
            "display_name" => Value::String(self.display_name(model, row)),
            "res_name" => {
                let target = row.vals[model.magic("res_model")].as_str().unwrap_or("");
                let id = row.vals[model.magic("res_id")].as_i64().unwrap_or(0);
                match self
                    .tables
                    .get(target)
                    .and_then(|t| t.rows.get(&id).map(|r| (t, r)))
                {
                    Some((t, r)) => Value::String(self.display_name(t.model, r)),
                    None => Value::Null,
                }
            }
            "state" => {
                let deadline = row.vals[model.magic("date_deadline")]
                    .as_str()
                    .unwrap_or("");
                let today = env.today();
                let state = match deadline.cmp(today.as_str()) {
                    std::cmp::Ordering::Less => "overdue",
                    std::cmp::Ordering::Equal => "today",
                    std::cmp::Ordering::Greater => "planned",
                };
                Value::String(state.into())
            }
            _ => Value::Null,
        }
    }

    /// A field's value as `read` answers it.
    fn render(&self, model: &Model, row: &Row, idx: usize, env: &Env, classic: bool) -> Value {
        let field = &model.fields[idx];
        let v = self.value(model, row, idx, env);
        match field.kind {
            Kind::Integer => match v {
                Value::Null => json!(0),
                v => v,
            },
            Kind::Float | Kind::Monetary => json!(v.as_f64().unwrap_or(0.0)),
            Kind::Boolean => Value::Bool(v == Value::Bool(true)),
            Kind::Many2one(rel) => match v.as_i64() {
                Some(id) if classic => match self.display_of(rel, id) {
                    Some(name) => json!([id, name]),
                    None => Value::Bool(false),
                },
                Some(id) => json!(id),
                None => Value::Bool(false),
            },
            Kind::Datetime => match v.as_str() {
                Some(s) => Value::String(clock::rpc(s).to_owned()),
                None => Value::Bool(false),
            },
            _ if field.name == "display_name" => v,
            _ => match v {
                Value::Null => Value::Bool(false),
                v => v,
            },
        }
    }

    /// Records as `read` answers them; missing ids are left out.
    pub(crate) fn read(
        &self,
        model: &Model,
        ids: &[i64],
        fields: &[usize],
        classic: bool,
        env: &Env,
    ) -> Vec<Value> {
        let t = self.table(model.name);
        ids.iter()
            .filter_map(|id| t.rows.get(id).map(|r| (id, r)))
            .map(|(id, row)| {
                let mut rec = Map::new();
                rec.insert("id".into(), json!(id));
                for &i in fields {
                    rec.insert(
                        model.fields[i].name.into(),
                        self.render(model, row, i, env, classic),
                    );
                }
                Value::Object(rec)
            })
            .collect()
    }

    fn holds(&self, row: &Row, d: &Domain, env: &Env) -> bool {
        match d {
            Domain::True => true,
            Domain::False => false,
            Domain::Not(d) => !self.holds(row, d, env),
            Domain::And(terms) => terms.iter().all(|d| self.holds(row, d, env)),
            Domain::Or(terms) => terms.iter().any(|d| self.holds(row, d, env)),
            Domain::Leaf(l) => self.leaf_holds(row, l, 0, env),
        }
    }

    fn leaf_holds(&self, row: &Row, leaf: &Leaf, depth: usize, env: &Env) -> bool {
        let (m, idx) = leaf.path[depth];
        let field = &m.fields[idx];
        if depth + 1 < leaf.path.len() {
            // A path through a many2one is a subquery on the related model.
            let Kind::Many2one(rel) = field.kind else {
                return false;
            };
            return row.vals[idx]
                .as_i64()
                .and_then(|id| self.row(rel, id))
                .is_some_and(|target| self.leaf_holds(target, leaf, depth + 1, env));
        }
        let v = self.value(m, row, idx, env);
        if let Kind::Many2one(rel) = field.kind {
            let textual = leaf.op.is_like()
                || leaf.value.is_string()
                || leaf
                    .value
                    .as_array()
                    .is_some_and(|a| a.iter().any(Value::is_string));
            if textual {
                // Text against a many2one compares the related record's name.
                let name = v
                    .as_i64()
                    .and_then(|id| self.display_of(rel, id))
                    .map_or(Value::Null, Value::String);
                return domain::compare(Kind::Char, &name, leaf.op, &leaf.value);
            }
        }
        domain::compare(field.kind, &v, leaf.op, &leaf.value)
    }

    fn sort_value(&self, model: &Model, row: &Row, idx: usize, env: &Env) -> Value {
        let v = self.value(model, row, idx, env);
        match model.fields[idx].kind {
            Kind::Many2one(rel) => v
                .as_i64()
                .and_then(|id| self.display_of(rel, id))
                .map_or(Value::Null, Value::String),
            Kind::Integer | Kind::Float | Kind::Monetary if v.is_null() => json!(0),
            Kind::Boolean => Value::Bool(v == Value::Bool(true)),
            _ => v,
        }
    }

    /// Ids matching `domain`, sorted by `keys` (ties in heap order), paged.
    pub(crate) fn search(
        &self,
        model: &Model,
        domain: &Domain,
        keys: &[Key],
        offset: usize,
        limit: Option<usize>,
        env: &Env,
    ) -> Vec<i64> {
        let t = self.table(model.name);
        let mut hits: Vec<(Vec<Value>, u64, i64)> = t
            .rows
            .iter()
            .filter(|(_, row)| self.holds(row, domain, env))
            .map(|(id, row)| {
                let sort = keys
                    .iter()
                    .map(|k| self.sort_value(model, row, k.field, env))
                    .collect();
                (sort, row.heap, *id)
            })
            .collect();
        hits.sort_by(|a, b| {
            keys.iter()
                .enumerate()
                .map(|(i, k)| order::compare(&a.0[i], &b.0[i], k.desc))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| a.1.cmp(&b.1))
        });
        hits.into_iter()
            .skip(offset)
            .take(limit.unwrap_or(usize::MAX))
            .map(|(_, _, id)| id)
            .collect()
    }

    /// Converts a written value to stored form, as the field's type does.
    fn convert(&self, model: &Model, idx: usize, v: &Value) -> Result<Value, OdooError> {
        let field = &model.fields[idx];
        let wrong = || {
            OdooError::value_error(format!(
                "Wrong value for {}.{}: {}",
                model.name,
                field.name,
                domain::py_repr(v)
            ))
        };
        Ok(match field.kind {
            Kind::Integer => match v {
                Value::Null | Value::Bool(false) => json!(0),
                Value::Bool(true) => json!(1),
                Value::Number(n) => json!(n.as_f64().unwrap_or(0.0) as i64),
                Value::String(s) => json!(s.trim().parse::<i64>().map_err(|_| {
                    OdooError::value_error(format!("invalid literal for int() with base 10: '{s}'"))
                })?),
                _ => return Err(wrong()),
            },
            Kind::Float | Kind::Monetary => match v {
                Value::Null | Value::Bool(false) => json!(0.0),
                Value::Bool(true) => json!(1.0),
                Value::Number(n) => json!(n.as_f64().unwrap_or(0.0)),
                Value::String(s) => json!(s.trim().parse::<f64>().map_err(|_| {
                    OdooError::value_error(format!("could not convert string to float: '{s}'"))
                })?),
                _ => return Err(wrong()),
            },
            Kind::Boolean => Value::Bool(truthy(v)),
            Kind::Char => match v {
                Value::Null | Value::Bool(false) => Value::Null,
                Value::String(s) => Value::String(s.clone()),
                Value::Number(n) => Value::String(n.to_string()),
                Value::Bool(true) => Value::String("True".into()),
                _ => return Err(wrong()),
            },
            Kind::Html => match v {
                Value::Null | Value::Bool(false) => Value::Null,
                Value::String(s) => Value::String(html(s)),
                _ => return Err(wrong()),
            },
            Kind::Selection(options) => match v {
                Value::Null | Value::Bool(false) => Value::Null,
                Value::String(s) if options.iter().any(|(k, _)| k == s) => v.clone(),
                _ => return Err(wrong()),
            },
            Kind::Many2one(rel) => match v {
                Value::Null | Value::Bool(false) => Value::Null,
                Value::Number(n) => {
                    let id = n.as_i64().ok_or_else(wrong)?;
                    if !self.exists(rel, id) {
                        return Err(OdooError::validation(format!(
                            "The operation cannot be completed:\n- Create/update: a mandatory field is not set.\n- Delete: another model requires the record being deleted. If possible, archive it instead.\n\nModel: {} ({}), Field: {} ({})",
                            model.description, model.name, field.string, field.name
                        )));
                    }
                    json!(id)
                }
                _ => return Err(wrong()),
            },
            Kind::Reference(_) => match v {
                Value::Null | Value::Bool(false) => Value::Null,
                Value::Number(n) => json!(n.as_i64().ok_or_else(wrong)?),
                _ => return Err(wrong()),
            },
            Kind::Datetime => match v {
                Value::Null | Value::Bool(false) => Value::Null,
                Value::String(s) => {
                    let t = clock::parse_datetime(s).ok_or_else(|| {
                        OdooError::value_error(format!(
                            "time data '{s}' does not match format '%Y-%m-%d %H:%M:%S'"
                        ))
                    })?;
                    Value::String(clock::stored_naive(t))
                }
                _ => return Err(wrong()),
            },
            Kind::Date => match v {
                Value::Null | Value::Bool(false) => Value::Null,
                Value::String(s) => {
                    let d = clock::parse_date(s.get(..10).unwrap_or(s)).ok_or_else(|| {
                        OdooError::value_error(format!(
                            "time data '{s}' does not match format '%Y-%m-%d'"
                        ))
                    })?;
                    Value::String(d.format("%Y-%m-%d").to_string())
                }
                _ => return Err(wrong()),
            },
        })
    }

    /// The changes a `write(vals)` makes, checked and in stored form. Magic and
    /// computed fields are ignored, as the ORM ignores them.
    pub(crate) fn prepare_write(
        &self,
        model: &'static Model,
        vals: &Map<String, Value>,
    ) -> Result<Vec<(usize, Value)>, OdooError> {
        let mut changes = Vec::new();
        for (name, v) in vals {
            let idx = model.idx(name).ok_or_else(|| invalid_field(model, name))?;
            let field = &model.fields[idx];
            if field.is_magic() || field.computed {
                continue;
            }
            changes.push((idx, self.convert(model, idx, v)?));
        }
        self.derive(model, &mut changes);
        let get = |name: &str| {
            model
                .idx(name)
                .and_then(|i| changes.iter().find(|(j, _)| *j == i))
                .map(|(_, v)| v)
        };
        if model.name == "res.partner" && get("name").is_some_and(Value::is_null) {
            return Err(OdooError::validation(
                "The operation cannot be completed: Contacts require a name",
            ));
        }
        for (idx, v) in &changes {
            let field = &model.fields[*idx];
            if field.required && v.is_null() {
                return Err(missing_required(model, field.string, field.name));
            }
        }
        Ok(changes)
    }

    /// Values other fields take from a write, as Odoo's onchange-style computes do.
    fn derive(&self, model: &Model, changes: &mut Vec<(usize, Value)>) {
        let has = |changes: &Vec<(usize, Value)>, name: &str| {
            let i = model.magic(name);
            changes.iter().any(|(j, _)| *j == i)
        };
        let get = |changes: &Vec<(usize, Value)>, name: &str| {
            let i = model.magic(name);
            changes
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, v)| v.clone())
        };
        match model.name {
            "crm.lead" => {
                if let Some(partner) = get(changes, "partner_id").and_then(|v| v.as_i64()) {
                    for (own, theirs) in [("email_from", "email"), ("phone", "phone")] {
                        if !has(changes, own) {
                            let v = self.stored("res.partner", partner, theirs);
                            changes.push((model.magic(own), v));
                        }
                    }
                }
                let won = get(changes, "stage_id")
                    .and_then(|v| v.as_i64())
                    .is_some_and(|s| self.stored("crm.stage", s, "is_won") == Value::Bool(true));
                if won {
                    changes.retain(|(j, _)| *j != model.magic("probability"));
                    changes.push((model.magic("probability"), json!(100.0)));
                }
            }
            "mail.activity" => {
                if let Some(m) = get(changes, "res_model_id").and_then(|v| v.as_i64()) {
                    let name = self.stored("ir.model", m, "model");
                    changes.retain(|(j, _)| *j != model.magic("res_model"));
                    changes.push((model.magic("res_model"), name));
                }
            }
            _ => {}
        }
    }

    /// A new record's values: defaults, then `vals`, checked.
    pub(crate) fn prepare_create(
        &self,
        model: &'static Model,
        vals: &Map<String, Value>,
        env: &Env,
    ) -> Result<Vec<Value>, OdooError> {
        let mut row = vec![Value::Null; model.fields.len()];
        for (i, f) in model.fields.iter().enumerate() {
            row[i] = match f.default {
                Initial::Nothing => match f.kind {
                    Kind::Integer => json!(0),
                    Kind::Float | Kind::Monetary => json!(0.0),
                    Kind::Boolean => json!(false),
                    _ => Value::Null,
                },
                Initial::Bool(b) => json!(b),
                Initial::Text(s) => json!(s),
                Initial::Id(id) => json!(id),
                Initial::CurrentUser => json!(env.uid),
                Initial::Today => json!(env.today()),
                Initial::Now => json!(env.stamp()),
            };
        }
        let mut changes = Vec::new();
        for (name, v) in vals {
            let idx = model.idx(name).ok_or_else(|| invalid_field(model, name))?;
            let field = &model.fields[idx];
            if field.is_magic() || field.computed {
                continue;
            }
            changes.push((idx, self.convert(model, idx, v)?));
        }
        self.derive(model, &mut changes);
        for (i, v) in changes {
            row[i] = v;
        }
        if model.name == "res.partner"
            && row[model.magic("name")].is_null()
            && row[model.magic("type")] == json!("contact")
        {
            return Err(OdooError::validation(
                "The operation cannot be completed: Contacts require a name",
            ));
        }
        for (i, f) in model.fields.iter().enumerate() {
            if f.required && row[i].is_null() {
                return Err(missing_required(model, f.string, f.name));
            }
        }
        if model.name == "mail.activity" {
            let target = row[model.magic("res_model")]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let id = row[model.magic("res_id")].as_i64().unwrap_or(0);
            if !self.exists(&target, id) {
                return Err(OdooError::missing(format!(
                    "Record does not exist or has been deleted.\n(Record: {target}({id},), User: {})",
                    env.uid
                )));
            }
        }
        Ok(row)
    }

    pub(crate) fn alloc_id(&mut self, model: &str) -> i64 {
        let t = self.table_mut(model);
        let id = t.next_id;
        t.next_id += 1;
        id
    }

    /// Stores a prepared record under `id`, stamped by `env`.
    pub(crate) fn insert(
        &mut self,
        model: &'static Model,
        id: i64,
        mut vals: Vec<Value>,
        env: &Env,
    ) {
        let stamp = json!(env.stamp());
        vals[model.magic("id")] = json!(id);
        vals[model.magic("create_date")] = stamp.clone();
        vals[model.magic("write_date")] = stamp;
        vals[model.magic("create_uid")] = json!(env.uid);
        vals[model.magic("write_uid")] = json!(env.uid);
        self.heap += 1;
        let heap = self.heap;
        let t = self.table_mut(model.name);
        t.next_id = t.next_id.max(id + 1);
        t.rows.insert(id, Row { vals, heap });
    }

    /// Applies `changes` to `ids`, bumping their `write_date` whether or not anything
    /// changed. Raises `MissingError` (changing nothing) if one is gone.
    pub(crate) fn update(
        &mut self,
        model: &'static Model,
        ids: &[i64],
        changes: &[(usize, Value)],
        env: &Env,
    ) -> Result<(), OdooError> {
        let gone: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !self.exists(model.name, *id))
            .collect();
        if !gone.is_empty() {
            return Err(OdooError::missing(format!(
                "One of the records you are trying to modify has already been deleted (Document type: {}).\n\n(Records: {:?}, User: {})",
                model.description, gone, env.uid
            )));
        }
        self.update_existing(model, ids, changes, env);
        Ok(())
    }

    /// [`Store::update`] for the ids that still exist.
    pub(crate) fn update_existing(
        &mut self,
        model: &'static Model,
        ids: &[i64],
        changes: &[(usize, Value)],
        env: &Env,
    ) {
        let stamp = json!(env.stamp());
        let (wd, wu) = (model.magic("write_date"), model.magic("write_uid"));
        for id in ids {
            self.heap += 1;
            let heap = self.heap;
            let Some(row) = self.table_mut(model.name).rows.get_mut(id) else {
                continue;
            };
            for (i, v) in changes {
                row.vals[*i] = v.clone();
            }
            row.vals[wd] = stamp.clone();
            row.vals[wu] = json!(env.uid);
            row.heap = heap;
        }
    }

    /// Refuses to delete what real Odoo refuses to delete.
    pub(crate) fn check_unlink(&self, model: &Model, ids: &[i64]) -> Result<(), OdooError> {
        if model.name != "res.partner" {
            return Ok(());
        }
        let users = self.table("res.users");
        let pidx = users.model.magic("partner_id");
        let linked: Vec<String> = users
            .rows
            .values()
            .filter(|u| u.vals[pidx].as_i64().is_some_and(|p| ids.contains(&p)))
            .map(|u| self.display_name(users.model, u))
            .collect();
        if linked.is_empty() {
            return Ok(());
        }
        Err(OdooError::user_error(format!(
            "You cannot delete contacts linked to an active user.\nAsk an administrator to archive their account instead.\n\nLinked active users :\n{}",
            linked.join("\n")
        )))
    }

    /// Deletes `ids` (those that exist) without a trace.
    pub(crate) fn remove(&mut self, model: &'static Model, ids: &[i64]) {
        let gone: HashSet<i64> = {
            let t = self.table_mut(model.name);
            ids.iter()
                .filter(|id| t.rows.remove(id).is_some())
                .copied()
                .collect()
        };
        if gone.is_empty() {
            return;
        }
        if model.thread {
            for (child, model_field) in [("mail.activity", "res_model"), ("mail.message", "model")]
            {
                let t = self.table_mut(child);
                let (mi, ri) = (t.model.magic(model_field), t.model.magic("res_id"));
                t.rows.retain(|_, r| {
                    !(r.vals[mi].as_str() == Some(model.name)
                        && r.vals[ri].as_i64().is_some_and(|id| gone.contains(&id)))
                });
            }
        }
        for t in self.tables.values_mut() {
            let refs: Vec<usize> = t
                .model
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.kind == Kind::Many2one(model.name))
                .map(|(i, _)| i)
                .collect();
            if refs.is_empty() {
                continue;
            }
            for row in t.rows.values_mut() {
                for &i in &refs {
                    if row.vals[i].as_i64().is_some_and(|id| gone.contains(&id)) {
                        row.vals[i] = Value::Null;
                    }
                }
            }
        }
    }
}

fn missing_required(model: &Model, string: &str, name: &str) -> OdooError {
    OdooError::validation(format!(
        "The operation cannot be completed: Missing required value for the field '{string}' ({name}).\nModel: {} ({})",
        model.description, model.name
    ))
}
