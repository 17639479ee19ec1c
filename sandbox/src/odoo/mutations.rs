//! The mutation driver: another Odoo user (Marc Demo, uid 6) working in the database,
//! so pollers have something to find — and something to get wrong.
//!
//! Each step is one of: edit a contact; a no-op write (same value written back, which
//! still bumps `write_date`); a burst (5–20 contacts written in one transaction: one
//! shared `write_date`); create or delete a contact; move, create, delete or lose
//! (archive) a lead; schedule an activity; mark one done (it vanishes, a message is
//! logged); log a note; or open a long transaction that writes a few records and
//! commits 2–6 steps later, stamped with its start. The choice of steps, records and
//! values depends only on the seed and the database's state.

use std::sync::{Arc, RwLock};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::errors::OdooError;
use super::mail;
use super::models::{ir_model_id, ACTIVITY_TYPES, STAGES};
use super::seed::{DEMO_UID, FIRST_GENERATED};
use super::store::{Env, Store};
use super::transactions::TxHandle;
use crate::data::Generator;

const CITIES: &[&str] = &["Milano", "Berlin", "London", "Austin", "Lyon", "Porto"];
const TITLES: &[&str] = &["Buyer", "CTO", "Head of Sales", "Engineer", "Founder"];
const NOTES: &[&str] = &[
    "Called, left a voicemail",
    "Sent the pricing sheet",
    "Asked for a demo next week",
    "Not interested this quarter",
];

#[derive(Debug)]
pub(crate) struct Driver {
    rng: ChaCha8Rng,
    gen: Generator,
    step: u64,
    next_person: u64,
    next_deal: u64,
    open: Vec<(TxHandle, u64)>,
}

impl Driver {
    pub(crate) fn new(seed: u64, contacts: usize, deals: usize) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x0d00_d21e),
            gen: Generator::new(seed),
            step: 0,
            next_person: contacts as u64,
            next_deal: deals as u64,
            open: Vec::new(),
        }
    }

    pub(crate) fn open_transactions(&self) -> usize {
        self.open.len()
    }

    fn partner(&mut self, db: &Store) -> Option<i64> {
        db.id_near("res.partner", FIRST_GENERATED, self.rng.gen())
    }

    fn contact(&mut self, db: &Store) -> Option<i64> {
        let id = self.partner(db)?;
        (db.stored("res.partner", id, "is_company") != json!(true)).then_some(id)
    }

    fn pick(&mut self, db: &Store, model: &str) -> Option<i64> {
        db.id_near(model, 1, self.rng.gen())
    }

    /// One step of work, at `env.now`.
    pub(crate) fn step(&mut self, store: &Arc<RwLock<Store>>, env: Env) {
        self.step += 1;
        let step = self.step;
        let (due, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|(_, at)| *at <= step);
        self.open = open;
        for (tx, _) in due {
            tx.commit();
        }
        let roll = self.rng.gen_range(0..100);
        if roll >= 91 {
            if let Err(e) = self.long_transaction(store, env) {
                tracing::debug!(error = %e, "odoo sandbox: long transaction step failed");
            }
            return;
        }
        let mut db = store.write().expect("store lock");
        if let Err(e) = self.apply(&mut db, roll, &env) {
            tracing::debug!(error = %e, roll, "odoo sandbox: mutation step failed");
        }
    }

    fn write(
        db: &mut Store,
        model: &str,
        id: i64,
        vals: Value,
        env: &Env,
    ) -> Result<(), OdooError> {
        let m = db.model(model)?;
        let vals: Map<String, Value> = vals.as_object().cloned().unwrap_or_default();
        let changes = db.prepare_write(m, &vals)?;
        db.update(m, &[id], &changes, env)
    }

    fn create(db: &mut Store, model: &str, vals: Value, env: &Env) -> Result<i64, OdooError> {
        let m = db.model(model)?;
        let vals: Map<String, Value> = vals.as_object().cloned().unwrap_or_default();
        let row = db.prepare_create(m, &vals, env)?;
        let id = db.alloc_id(m.name);
        db.insert(m, id, row, env);
        Ok(id)
    }

    fn new_contact(&mut self, db: &Store) -> Value {
        let person = self.gen.person(self.next_person);
        self.next_person += 1;
        let employer = self.partner(db).map(|p| {
            if db.stored("res.partner", p, "is_company") == json!(true) {
                json!(p)
            } else {
                db.stored("res.partner", p, "parent_id")
            }
        });
        json!({
            "name": format!("{} {}", person.first_name, person.last_name),
            "email": person.email,
            "phone": person.phone,
            "function": person.job_title,
            "parent_id": employer.unwrap_or(Value::Null),
        })
    }

    fn apply(&mut self, db: &mut Store, roll: u32, env: &Env) -> Result<(), OdooError> {
        match roll {
            0..=17 => {
                if let Some(id) = self.partner(db) {
                    let vals = match self.rng.gen_range(0..3) {
                        0 => json!({"city": CITIES[self.rng.gen_range(0..CITIES.len())]}),
                        1 => json!({"function": TITLES[self.rng.gen_range(0..TITLES.len())]}),
                        _ => {
                            json!({"phone": format!("+39 02 {:04} {:04}", self.rng.gen_range(0..10_000), self.rng.gen_range(0..10_000))})
                        }
                    };
                    Self::write(db, "res.partner", id, vals, env)?;
                }
            }
            18..=27 => {
                if let Some(id) = self.partner(db) {
                    let email = db.stored("res.partner", id, "email");
                    Self::write(db, "res.partner", id, json!({"email": email}), env)?;
                }
            }
            28..=35 => {
                let n = self.rng.gen_range(5..=20);
                let title = TITLES[self.rng.gen_range(0..TITLES.len())];
                for _ in 0..n {
                    if let Some(id) = self.partner(db) {
                        Self::write(db, "res.partner", id, json!({"function": title}), env)?;
                    }
                }
            }
            36..=45 => {
                let vals = self.new_contact(db);
                Self::create(db, "res.partner", vals, env)?;
            }
            46..=49 => {
                if let Some(id) = self.contact(db) {
                    let m = db.model("res.partner")?;
                    db.check_unlink(m, &[id])?;
                    db.remove(m, &[id]);
                }
            }
            50..=59 => {
                if let Some(id) = self.pick(db, "crm.lead") {
                    let vals = if self.rng.gen_bool(0.5) {
                        json!({"stage_id": STAGES[self.rng.gen_range(0..STAGES.len())].0})
                    } else {
                        json!({"expected_revenue": f64::from(self.rng.gen_range(1..500u32) * 100)})
                    };
                    Self::write(db, "crm.lead", id, vals, env)?;
                }
            }
            60..=64 => {
                let opp = self.gen.opportunity(self.next_deal);
                self.next_deal += 1;
                let partner = self.contact(db);
                Self::create(
                    db,
                    "crm.lead",
                    json!({"name": opp.name, "expected_revenue": f64::from(opp.amount), "partner_id": partner, "probability": 10.0}),
                    env,
                )?;
            }
            65..=67 => {
                if let Some(id) = self.pick(db, "crm.lead") {
                    db.remove(db.model("crm.lead")?, &[id]);
                }
            }
            68..=70 => {
                if let Some(id) = self.pick(db, "crm.lead") {
                    Self::write(
                        db,
                        "crm.lead",
                        id,
                        json!({"active": false, "probability": 0.0}),
                        env,
                    )?;
                }
            }
            71..=78 => {
                let on_lead = self.rng.gen_bool(0.6);
                let (model, target) = if on_lead {
                    ("crm.lead", self.pick(db, "crm.lead"))
                } else {
                    ("res.partner", self.partner(db))
                };
                if let Some(target) = target {
                    let (kind, name) = ACTIVITY_TYPES[self.rng.gen_range(0..ACTIVITY_TYPES.len())];
                    let due = (env.now + chrono::Duration::days(self.rng.gen_range(-2..10)))
                        .date_naive()
                        .to_string();
                    Self::create(
                        db,
                        "mail.activity",
                        json!({"res_model_id": ir_model_id(model), "res_id": target, "activity_type_id": kind, "summary": format!("{name} follow-up"), "date_deadline": due}),
                        env,
                    )?;
                }
            }
            79..=84 => {
                if let Some(id) = self.pick(db, "mail.activity") {
                    mail::activity_done(db, &[id], "Done by Marc", env)?;
                }
            }
            _ => {
                let on_lead = self.rng.gen_bool(0.5);
                let (model, target) = if on_lead {
                    ("crm.lead", self.pick(db, "crm.lead"))
                } else {
                    ("res.partner", self.partner(db))
                };
                if let Some(target) = target {
                    let note = NOTES[self.rng.gen_range(0..NOTES.len())];
                    let vals = Map::from_iter([
                        ("body".to_owned(), json!(format!("<p>{note}</p>"))),
                        ("message_type".to_owned(), json!("comment")),
                        ("subtype_id".to_owned(), json!(2)),
                        ("author_id".to_owned(), json!(4)),
                    ]);
                    mail::post_message(db, db.model(model)?, target, &vals, env)?;
                }
            }
        }
        Ok(())
    }

    fn long_transaction(&mut self, store: &Arc<RwLock<Store>>, env: Env) -> Result<(), OdooError> {
        let mut tx = TxHandle::begin(store.clone(), DEMO_UID, env.now);
        let (targets, contact) = {
            let db = store.read().expect("store lock");
            let n = self.rng.gen_range(1..=3);
            let targets: Vec<i64> = (0..n).filter_map(|_| self.partner(&db)).collect();
            let contact = self.rng.gen_bool(0.5).then(|| self.new_contact(&db));
            (targets, contact)
        };
        for id in targets {
            let title = TITLES[self.rng.gen_range(0..TITLES.len())];
            tx.write("res.partner", &[id], json!({"function": title}))?;
        }
        if let Some(vals) = contact {
            tx.create("res.partner", vals)?;
        }
        let commit_at = self.step + self.rng.gen_range(2..=6);
        self.open.push((tx, commit_at));
        Ok(())
    }
}
