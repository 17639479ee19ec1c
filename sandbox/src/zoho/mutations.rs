//! The mutation driver: a colleague working in the CRM's UI. Each step creates,
//! updates or deletes a contact, account or deal, drawn from the seed and the step
//! number, so the same seed gives the same sequence of changes. Changes bump
//! `Modified_Time` and are notified like any other, those of one `mutate` call
//! together.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::data::Generator;

use super::schema::{Module, INTERESTS, LEAD_SOURCES, STAGES};
use super::seed::{account_values, contact_values, deal_values, pick_index};
use super::store::{now_ms, Change, Operation, Store, Value, UI_USER};
use super::ZohoSandbox;

const MUTATION_STREAM: u64 = 0x20_99;
const FIRST_NEW_INDEX: u64 = 1_000_000;

fn nth_id(store: &Store, module: Module, rng: &mut ChaCha8Rng) -> Option<u64> {
    let records = &store.table(module).records;
    pick_index(rng, records.len()).and_then(|k| records.keys().nth(k).copied())
}

fn field(module: Module, name: &str) -> usize {
    module
        .field_index(name)
        .unwrap_or_else(|| panic!("{} has no field {name}", module.name()))
}

/// The fields an edit in the UI changes.
fn edit(
    g: &Generator,
    module: Module,
    step: u64,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, Option<Value>)> {
    let text = |s: &str| Some(Value::Text(s.to_owned()));
    match module {
        Module::Contacts => match rng.gen_range(0..4) {
            0 => vec![(field(module, "Title"), text(&g.person(step).job_title))],
            1 => vec![(
                field(module, "Phone"),
                text(&g.person(FIRST_NEW_INDEX + step).phone),
            )],
            2 => vec![(
                field(module, "Lead_Source"),
                text(LEAD_SOURCES[rng.gen_range(1..LEAD_SOURCES.len())]),
            )],
            _ => {
                let picked: Vec<String> = INTERESTS
                    .iter()
                    .filter(|_| rng.gen_bool(0.4))
                    .map(|s| (*s).to_owned())
                    .collect();
                vec![(
                    field(module, "Interests"),
                    (!picked.is_empty()).then_some(Value::Multi(picked)),
                )]
            }
        },
        Module::Accounts => match rng.gen_range(0..2) {
            0 => vec![(
                field(module, "Employees"),
                Some(Value::Int(rng.gen_range(5..5_000))),
            )],
            _ => vec![(
                field(module, "Phone"),
                text(&g.org(FIRST_NEW_INDEX + step).phone),
            )],
        },
        _ => match rng.gen_range(0..2) {
            0 => vec![(
                field(module, "Stage"),
                text(STAGES[rng.gen_range(0..STAGES.len())].0),
            )],
            _ => vec![(
                field(module, "Amount"),
                Some(Value::Decimal(f64::from(
                    g.opportunity(FIRST_NEW_INDEX + step).amount,
                ))),
            )],
        },
    }
}

fn step(store: &mut Store, g: &Generator, step: u64, at: i64) -> Option<Change> {
    let mut rng = g.rng(MUTATION_STREAM, step);
    let module = match rng.gen_range(0..10) {
        0..=4 => Module::Contacts,
        5..=6 => Module::Accounts,
        _ => Module::Deals,
    };
    let user = store.user_id(UI_USER);
    let roll = rng.gen_range(0..100);
    if store.table(module).records.len() < 2 || roll < 30 {
        let index = FIRST_NEW_INDEX + step;
        let values = match module {
            Module::Contacts => {
                let account = nth_id(store, Module::Accounts, &mut rng);
                contact_values(g, index, &mut rng, account)
            }
            Module::Accounts => account_values(g, index, &mut rng),
            _ => {
                let account = nth_id(store, Module::Accounts, &mut rng);
                let contact = nth_id(store, Module::Contacts, &mut rng);
                deal_values(g, index, &mut rng, account, contact)
            }
        };
        let id = store.insert(module, values, user, user, at);
        return Some(Change {
            module,
            operation: Operation::Insert,
            id,
            fields: Vec::new(),
        });
    }
    let id = nth_id(store, module, &mut rng)?;
    if roll < 85 {
        let set = edit(g, module, step, &mut rng);
        let fields = store.update(module, id, &set, None, user, at)?;
        Some(Change {
            module,
            operation: Operation::Update,
            id,
            fields,
        })
    } else {
        store.delete(module, id, user, at).then_some(Change {
            module,
            operation: Operation::Delete,
            id,
            fields: Vec::new(),
        })
    }
}

impl ZohoSandbox {
    /// `n` steps of the mutation driver, notified together.
    pub fn mutate(&self, n: usize) {
        if n == 0 {
            return;
        }
        let g = Generator::new(self.config.seed);
        let at = now_ms();
        let changes: Vec<Change> = {
            let mut store = self.store_mut();
            (0..n)
                .filter_map(|_| {
                    let s = self.mutation_step.fetch_add(1, Ordering::Relaxed);
                    step(&mut store, &g, s, at)
                })
                .collect()
        };
        self.notify(changes);
    }

    /// Runs the mutation driver at about `per_sec` changes a second, those of each
    /// 50 ms tick together, until the task is aborted or the sandbox dropped.
    pub fn spawn_mutations(self: &Arc<Self>, per_sec: f64) -> tokio::task::JoinHandle<()> {
        crate::driver::spawn(self, per_sec, Self::mutate)
    }
}

impl ZohoSandbox {
    /// A colleague sets text fields of one record in the UI (notified like any other
    /// change). Answers whether the record exists; unknown modules or fields panic, as
    /// this is for tests.
    pub fn edit_text(&self, module: &str, id: &str, fields: &[(&str, &str)]) -> bool {
        let module = Module::parse(module).expect("a Zoho module");
        let set: Vec<(usize, Option<Value>)> = fields
            .iter()
            .map(|(name, value)| (field(module, name), Some(Value::Text((*value).to_owned()))))
            .collect();
        let Ok(id) = id.parse::<u64>() else {
            return false;
        };
        let change = {
            let mut store = self.store_mut();
            let user = store.user_id(UI_USER);
            store
                .update(module, id, &set, None, user, now_ms())
                .map(|fields| Change {
                    module,
                    operation: Operation::Update,
                    id,
                    fields,
                })
        };
        let found = change.is_some();
        self.notify(change.into_iter().collect());
        found
    }
}
