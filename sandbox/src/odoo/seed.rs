//! The database a fresh sandbox holds: what a new Odoo database has, plus generated
//! companies, contacts, opportunities and activities.
//!
//! Odoo's own records come first, as in a real database: `YourCompany` (partner 1),
//! `OdooBot` (partner 2, archived, user 1), `Administrator` (partner 3, user 2 — the
//! API user), `Marc Demo` (partner 4, user 6 — the other user, whose edits the
//! mutation driver makes); CRM stages New, Qualified, Proposition, Won; activity types
//! Email, Call, Meeting, To-Do; message subtypes Discussions (1), Note (2), Activities
//! (3); `ir.model` rows for the emulated models.
//!
//! Generated records follow, ids counting on from there: companies, then contacts
//! (most of them employees of a company), then leads (every fifth is a `lead`, the rest
//! `opportunity`; lost ones are archived with probability 0, as Odoo does), then an
//! activity on every other lead. Contacts have a `mobile` only on Odoo 17 (19 has no
//! such field). They were "imported" a day before the sandbox
//! started, 500 records per transaction, so whole batches share one `write_date`.
//! Values depend only on the seed and the index; dates are relative to the start.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use serde_json::{json, Map, Value};

use super::models::{self, ir_model_id, ACTIVITY_TYPES, STAGES, SUBTYPES};
use super::store::{Env, Store};
use super::Config;
use crate::data::Generator;

pub(crate) const SYSTEM_UID: i64 = 1;
pub(crate) const ADMIN_UID: i64 = 2;
pub(crate) const DEMO_UID: i64 = 6;
/// The first generated partner's id.
pub(crate) const FIRST_GENERATED: i64 = 5;

const BATCH: usize = 500;
const ODOO_KIND: u64 = 0x0d00;

fn put(db: &mut Store, model: &str, id: Option<i64>, vals: Value, env: &Env) -> i64 {
    let m = db.model(model).expect("seeded models exist");
    let vals: Map<String, Value> = match vals {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    let row = db
        .prepare_create(m, &vals, env)
        .unwrap_or_else(|e| panic!("seed {model} is valid: {e}"));
    let id = id.unwrap_or_else(|| db.alloc_id(m.name));
    db.insert(m, id, row, env);
    id
}

fn system(db: &mut Store, config: &Config, env: &Env) {
    for m in models::registry(19) {
        let id = ir_model_id(m.name);
        put(
            db,
            "ir.model",
            id,
            json!({"name": m.description, "model": m.name}),
            env,
        );
    }
    for (id, _, name, internal) in SUBTYPES {
        put(
            db,
            "mail.message.subtype",
            Some(*id),
            json!({"name": name, "internal": internal, "sequence": id}),
            env,
        );
    }
    for (id, name, sequence, won) in STAGES {
        put(
            db,
            "crm.stage",
            Some(*id),
            json!({"name": name, "sequence": sequence, "is_won": won}),
            env,
        );
    }
    for (id, name) in ACTIVITY_TYPES {
        put(
            db,
            "mail.activity.type",
            Some(*id),
            json!({"name": name, "sequence": id}),
            env,
        );
    }
    let partners = [
        (
            1,
            json!({"name": "YourCompany", "is_company": true, "email": "info@yourcompany.example.com", "city": "Brussels", "website": "https://www.example.com"}),
        ),
        (
            2,
            json!({"name": "OdooBot", "email": "odoobot@example.com", "active": false}),
        ),
        (3, json!({"name": "Administrator", "email": config.login})),
        (
            4,
            json!({"name": "Marc Demo", "email": "mark.brown23@example.com", "parent_id": 1, "function": "Sales Manager"}),
        ),
    ];
    for (id, vals) in partners {
        put(db, "res.partner", Some(id), vals, env);
    }
    for (id, name, login, partner, active) in [
        (SYSTEM_UID, "OdooBot", "__system__", 2, false),
        (ADMIN_UID, "Administrator", config.login.as_str(), 3, true),
        (DEMO_UID, "Marc Demo", "demo", 4, true),
    ] {
        put(
            db,
            "res.users",
            Some(id),
            json!({"name": name, "login": login, "partner_id": partner, "active": active}),
            env,
        );
    }
}

/// Stamps for the `n`-th generated record: one import transaction per batch.
fn import_env(base: DateTime<Utc>, n: usize, rng_micros: u32) -> Env {
    let batch = (n / BATCH) as i64;
    Env {
        uid: ADMIN_UID,
        now: base + Duration::seconds(batch) + Duration::microseconds(i64::from(rng_micros)),
    }
}

fn stage_of(hubspot_stage: &str) -> (i64, f64, bool) {
    match hubspot_stage {
        "appointmentscheduled" => (1, 10.0, true),
        "qualifiedtobuy" => (2, 30.0, true),
        "presentationscheduled" | "decisionmakerboughtin" | "contractsent" => (3, 60.0, true),
        "closedwon" => (models::WON_STAGE, 100.0, true),
        _ => (3, 0.0, false),
    }
}

pub(crate) fn seed(db: &mut Store, config: &Config, now: DateTime<Utc>) {
    let created = Env {
        uid: SYSTEM_UID,
        now: now - Duration::days(30),
    };
    system(db, config, &created);

    let gen = Generator::new(config.seed);
    let base = now - Duration::days(1);
    let micros = |n: usize| {
        gen.rng(ODOO_KIND, (n / BATCH) as u64)
            .gen_range(0..1_000_000u32)
    };
    let mut n = 0;
    let mut companies = Vec::with_capacity(config.companies);
    for i in 0..config.companies {
        let org = gen.org(i as u64);
        let env = import_env(base, n, micros(n));
        let vals = json!({
            "name": org.name,
            "is_company": true,
            "email": format!("info@{}", org.domain),
            "phone": org.phone,
            "website": format!("https://{}", org.domain),
            "city": org.city,
        });
        companies.push((put(db, "res.partner", None, vals, &env), org.city));
        n += 1;
    }
    let has_mobile = db
        .model("res.partner")
        .is_ok_and(|m| m.idx("mobile").is_some());
    let mut contacts = Vec::with_capacity(config.contacts);
    for i in 0..config.contacts {
        let person = gen.person(i as u64);
        let mut rng = gen.rng(ODOO_KIND + 1, i as u64);
        let employer = (!companies.is_empty() && rng.gen_bool(0.85))
            .then(|| &companies[rng.gen_range(0..companies.len())]);
        let mobile = rng.gen_bool(0.5).then(|| {
            format!(
                "+39 3{:02} {:07}",
                rng.gen_range(20..50),
                rng.gen_range(0..10_000_000)
            )
        });
        let env = import_env(base, n, micros(n));
        let mut vals = json!({
            "name": format!("{} {}", person.first_name, person.last_name),
            "email": person.email,
            "phone": person.phone,
            "function": person.job_title,
            "parent_id": employer.map(|c| c.0),
            "city": employer.map(|c| c.1.clone()),
        });
        if has_mobile {
            vals["mobile"] = json!(mobile);
        }
        contacts.push(put(db, "res.partner", None, vals, &env));
        n += 1;
    }
    let today = base.date_naive();
    let mut leads = Vec::with_capacity(config.deals);
    for i in 0..config.deals {
        let opp = gen.opportunity(i as u64);
        let (stage, probability, active) = stage_of(&opp.stage);
        let env = import_env(base, n, micros(n));
        let priority = ["0", "1", "2", "0"][i % 4];
        let mut vals = json!({
            "name": opp.name,
            "type": if i % 5 == 4 { "lead" } else { "opportunity" },
            "stage_id": stage,
            "probability": probability,
            "active": active,
            "expected_revenue": f64::from(opp.amount),
            "date_deadline": (today + Duration::days((i % 90) as i64)).to_string(),
            "user_id": if i % 2 == 0 { ADMIN_UID } else { DEMO_UID },
            "priority": priority,
        });
        if !contacts.is_empty() {
            vals["partner_id"] = json!(contacts[i % contacts.len()]);
        }
        leads.push((put(db, "crm.lead", None, vals, &env), active, opp.name));
        n += 1;
    }
    let lead_model = ir_model_id("crm.lead");
    for (i, (lead, active, name)) in leads.iter().enumerate().step_by(2) {
        if !active {
            continue;
        }
        let env = import_env(base, n, micros(n));
        let (kind, verb) = [(2, "Call"), (1, "Email"), (3, "Meet")][i % 3];
        let vals = json!({
            "res_model_id": lead_model,
            "res_id": lead,
            "activity_type_id": kind,
            "summary": format!("{verb} about {name}"),
            "date_deadline": (today + Duration::days((i % 14) as i64 - 4)).to_string(),
            "user_id": ADMIN_UID,
        });
        put(db, "mail.activity", None, vals, &env);
        n += 1;
    }
}
