//! Deterministic records from `data::Generator`, mapped onto Zoho's layouts: the same
//! seed and counts always give the same org, ids and times included. Seeded records
//! were created and modified during 2024; the mutation driver builds its new records
//! with the same functions.

use chrono::{Duration, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::data::Generator;

use super::schema::{Module, ACCOUNT_TYPES, DEAL_TYPES, INTERESTS, LEAD_SOURCES};
use super::store::{Store, Value, API_USER, UI_USER};

/// 2024-01-01T00:00:00Z.
const EPOCH_MS: i64 = 1_704_067_200_000;
const DAY_MS: i64 = 86_400_000;

/// Generator streams, apart from `data`'s own kinds.
pub const CONTACT_STREAM: u64 = 0x20_01;
pub const ACCOUNT_STREAM: u64 = 0x20_02;
pub const DEAL_STREAM: u64 = 0x20_03;

const CITIES: &[&str] = &[
    "Milano",
    "Berlin",
    "London",
    "Austin",
    "Toronto",
    "Bangalore",
    "Sydney",
    "Tokyo",
];

fn set(values: &mut Vec<Option<Value>>, module: Module, name: &str, value: Value) {
    values.resize(module.fields().len(), None);
    let i = module
        .field_index(name)
        .unwrap_or_else(|| panic!("{} has no field {name}", module.name()));
    values[i] = Some(value);
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn pick<'a>(rng: &mut ChaCha8Rng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

/// Picks one of `n` ids by position, or none when there are none.
pub fn pick_index(rng: &mut ChaCha8Rng, n: usize) -> Option<usize> {
    (n > 0).then(|| rng.gen_range(0..n))
}

/// The owner of a generated record: mostly the API user.
pub fn owner_index(rng: &mut ChaCha8Rng) -> usize {
    if rng.gen_bool(0.8) {
        API_USER
    } else {
        UI_USER
    }
}

fn industry(data_industry: &str) -> &'static str {
    match data_industry {
        "SOFTWARE" => "Technology",
        "RETAIL" => "Retail",
        "MANUFACTURING" => "Manufacturing",
        "LOGISTICS" => "Logistics",
        "FINANCE" => "Financial Services",
        "HEALTHCARE" => "Healthcare",
        _ => "Consulting",
    }
}

/// `data`'s HubSpot-style stage ids as Zoho stages.
pub fn stage(data_stage: &str) -> &'static str {
    match data_stage {
        "appointmentscheduled" => "Qualification",
        "qualifiedtobuy" => "Needs Analysis",
        "presentationscheduled" => "Value Proposition",
        "decisionmakerboughtin" => "Identify Decision Makers",
        "contractsent" => "Negotiation/Review",
        "closedwon" => "Closed Won",
        "closedlost" => "Closed Lost",
        _ => "Proposal/Price Quote",
    }
}

pub fn contact_values(
    g: &Generator,
    i: u64,
    rng: &mut ChaCha8Rng,
    account: Option<u64>,
) -> Vec<Option<Value>> {
    let m = Module::Contacts;
    let p = g.person(i);
    let mut v = Vec::new();
    set(&mut v, m, "First_Name", text(p.first_name));
    set(&mut v, m, "Last_Name", text(p.last_name));
    set(&mut v, m, "Email", text(p.email));
    set(&mut v, m, "Phone", text(p.phone));
    set(&mut v, m, "Title", text(p.job_title));
    set(
        &mut v,
        m,
        "Lead_Source",
        text(pick(rng, &LEAD_SOURCES[1..])),
    );
    set(&mut v, m, "Mailing_City", text(pick(rng, CITIES)));
    if rng.gen_bool(0.5) {
        let mobile = format!(
            "+39 3{:02} {:07}",
            rng.gen_range(20..50),
            rng.gen_range(0..10_000_000)
        );
        set(&mut v, m, "Mobile", text(mobile));
    }
    if let Some(account) = account {
        set(&mut v, m, "Account_Name", Value::Lookup(account));
    }
    let interests: Vec<String> = INTERESTS
        .iter()
        .filter(|_| rng.gen_bool(0.3))
        .map(|s| (*s).to_owned())
        .collect();
    if !interests.is_empty() {
        set(&mut v, m, "Interests", Value::Multi(interests));
    }
    set(&mut v, m, "Email_Opt_Out", Value::Bool(rng.gen_bool(0.1)));
    if rng.gen_bool(0.3) {
        let born = NaiveDate::from_ymd_opt(1960, 1, 1).expect("a date")
            + Duration::days(rng.gen_range(0..15_000));
        set(&mut v, m, "Date_of_Birth", Value::Date(born));
    }
    v
}

pub fn account_values(g: &Generator, i: u64, rng: &mut ChaCha8Rng) -> Vec<Option<Value>> {
    let m = Module::Accounts;
    let o = g.org(i);
    let mut v = Vec::new();
    set(&mut v, m, "Account_Name", text(o.name));
    set(&mut v, m, "Website", text(format!("https://{}", o.domain)));
    set(&mut v, m, "Phone", text(o.phone));
    set(&mut v, m, "Industry", text(industry(&o.industry)));
    set(&mut v, m, "Billing_City", text(o.city));
    set(
        &mut v,
        m,
        "Account_Type",
        text(pick(rng, &ACCOUNT_TYPES[1..])),
    );
    set(&mut v, m, "Employees", Value::Int(rng.gen_range(5..5_000)));
    let revenue = rng.gen_range(100..50_000) as f64 * 1_000.0;
    set(&mut v, m, "Annual_Revenue", Value::Decimal(revenue));
    v
}

pub fn deal_values(
    g: &Generator,
    i: u64,
    rng: &mut ChaCha8Rng,
    account: Option<u64>,
    contact: Option<u64>,
) -> Vec<Option<Value>> {
    let m = Module::Deals;
    let d = g.opportunity(i);
    let mut v = Vec::new();
    set(&mut v, m, "Deal_Name", text(d.name));
    set(&mut v, m, "Amount", Value::Decimal(f64::from(d.amount)));
    set(&mut v, m, "Stage", text(stage(&d.stage)));
    let closing = NaiveDate::from_ymd_opt(2024, 1, 1).expect("a date")
        + Duration::days(rng.gen_range(0..540));
    set(&mut v, m, "Closing_Date", Value::Date(closing));
    set(&mut v, m, "Type", text(pick(rng, &DEAL_TYPES[1..])));
    set(
        &mut v,
        m,
        "Lead_Source",
        text(pick(rng, &LEAD_SOURCES[1..])),
    );
    if let Some(account) = account {
        set(&mut v, m, "Account_Name", Value::Lookup(account));
    }
    if let Some(contact) = contact {
        set(&mut v, m, "Contact_Name", Value::Lookup(contact));
    }
    v
}

/// Seeds the org: accounts, then contacts (most at an account), then deals.
pub fn seed(store: &mut Store, g: &Generator, contacts: usize, accounts: usize, deals: usize) {
    let mut account_ids = Vec::with_capacity(accounts);
    for i in 0..accounts as u64 {
        let mut rng = g.rng(ACCOUNT_STREAM, i);
        let created = EPOCH_MS + i as i64 * 97_000;
        let modified = created + rng.gen_range(0..90) * DAY_MS + rng.gen_range(0..86_400) * 1000;
        let owner = store.user_id(owner_index(&mut rng));
        let values = account_values(g, i, &mut rng);
        account_ids.push(store.insert_at(
            Module::Accounts,
            values,
            owner,
            owner,
            created,
            modified,
        ));
    }
    let mut contact_ids = Vec::with_capacity(contacts);
    for i in 0..contacts as u64 {
        let mut rng = g.rng(CONTACT_STREAM, i);
        let created = EPOCH_MS + 3_600_000 + i as i64 * 53_000;
        let modified = created + rng.gen_range(0..120) * DAY_MS + rng.gen_range(0..86_400) * 1000;
        let owner = store.user_id(owner_index(&mut rng));
        let account = if rng.gen_bool(0.85) {
            pick_index(&mut rng, account_ids.len()).map(|k| account_ids[k])
        } else {
            None
        };
        let values = contact_values(g, i, &mut rng, account);
        contact_ids.push(store.insert_at(
            Module::Contacts,
            values,
            owner,
            owner,
            created,
            modified,
        ));
    }
    for i in 0..deals as u64 {
        let mut rng = g.rng(DEAL_STREAM, i);
        let created = EPOCH_MS + 7_200_000 + i as i64 * 71_000;
        let modified = created + rng.gen_range(0..60) * DAY_MS + rng.gen_range(0..86_400) * 1000;
        let owner = store.user_id(owner_index(&mut rng));
        let account = pick_index(&mut rng, account_ids.len()).map(|k| account_ids[k]);
        let contact = pick_index(&mut rng, contact_ids.len()).map(|k| contact_ids[k]);
        let values = deal_values(g, i, &mut rng, account, contact);
        store.insert_at(Module::Deals, values, owner, owner, created, modified);
    }
}
