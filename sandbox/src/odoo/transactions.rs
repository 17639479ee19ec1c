//! Long transactions: the reason a `write_date > last` poll misses records.
//!
//! Odoo stamps `write_date` with the transaction's *start* (`now()` in Postgres), but
//! other sessions see the rows only once the transaction commits. A transaction that
//! starts at 12:00:00 and commits at 12:00:30 publishes rows dated 12:00:00 after a
//! poller may already have moved its cursor past 12:00:29.
//!
//! A [`TxHandle`] records its writes and applies them all at commit, stamped with its
//! start. Ids of created records are drawn at once, as a Postgres sequence hands them
//! out, so they too are "early". Dropping the handle without committing rolls back.
//! Row locks are not emulated: a row written both in an open transaction and by a
//! later request ends with the values (and the early stamp) of whichever commits last.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::errors::OdooError;
use super::models::Model;
use super::store::{Env, Store};

#[derive(Debug)]
enum Op {
    Create {
        model: &'static Model,
        id: i64,
        vals: Vec<Value>,
    },
    Write {
        model: &'static Model,
        ids: Vec<i64>,
        changes: Vec<(usize, Value)>,
    },
    Unlink {
        model: &'static Model,
        ids: Vec<i64>,
    },
}

/// An open database transaction; see the module docs.
#[derive(Debug)]
pub struct TxHandle {
    store: Arc<RwLock<Store>>,
    env: Env,
    ops: Vec<Op>,
    created: Vec<(&'static str, i64)>,
}

fn vals_map(vals: Value) -> Result<Map<String, Value>, OdooError> {
    match vals {
        Value::Object(m) => Ok(m),
        other => Err(OdooError::value_error(format!(
            "vals must be a dict, not {other}"
        ))),
    }
}

impl TxHandle {
    pub(crate) fn begin(store: Arc<RwLock<Store>>, uid: i64, now: DateTime<Utc>) -> Self {
        Self {
            store,
            env: Env { uid, now },
            ops: Vec::new(),
            created: Vec::new(),
        }
    }

    /// When the transaction started: the `write_date` of everything it writes.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.env.now
    }

    /// Creates a record (invisible to others until commit); answers its id.
    pub fn create(&mut self, model: &str, vals: Value) -> Result<i64, OdooError> {
        let vals = vals_map(vals)?;
        let mut db = self.store.write().expect("store lock");
        let m = db.model(model)?;
        let row = db.prepare_create(m, &vals, &self.env)?;
        let id = db.alloc_id(m.name);
        self.ops.push(Op::Create {
            model: m,
            id,
            vals: row,
        });
        self.created.push((m.name, id));
        Ok(id)
    }

    /// Writes `vals` on `ids` (committed records or ones this transaction created).
    pub fn write(&mut self, model: &str, ids: &[i64], vals: Value) -> Result<(), OdooError> {
        let vals = vals_map(vals)?;
        let db = self.store.read().expect("store lock");
        let m = db.model(model)?;
        let changes = db.prepare_write(m, &vals)?;
        let gone: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !db.exists(m.name, *id) && !self.created.contains(&(m.name, *id)))
            .collect();
        if !gone.is_empty() {
            return Err(OdooError::missing(format!(
                "One of the records you are trying to modify has already been deleted (Document type: {}).\n\n(Records: {gone:?}, User: {})",
                m.description, self.env.uid
            )));
        }
        self.ops.push(Op::Write {
            model: m,
            ids: ids.to_vec(),
            changes,
        });
        Ok(())
    }

    /// Deletes `ids` at commit.
    pub fn unlink(&mut self, model: &str, ids: &[i64]) -> Result<(), OdooError> {
        let db = self.store.read().expect("store lock");
        let m = db.model(model)?;
        db.check_unlink(m, ids)?;
        drop(db);
        self.ops.push(Op::Unlink {
            model: m,
            ids: ids.to_vec(),
        });
        Ok(())
    }

    /// Ids this transaction created, by model.
    pub fn created(&self) -> &[(&'static str, i64)] {
        &self.created
    }

    /// Publishes every write at once, each stamped with the transaction's start.
    pub fn commit(self) {
        let mut db = self.store.write().expect("store lock");
        for op in self.ops {
            match op {
                Op::Create { model, id, vals } => db.insert(model, id, vals, &self.env),
                Op::Write {
                    model,
                    ids,
                    changes,
                } => db.update_existing(model, &ids, &changes, &self.env),
                Op::Unlink { model, ids } => db.remove(model, &ids),
            }
        }
    }

    /// Throws every write away (as dropping the handle does).
    pub fn rollback(self) {}
}
