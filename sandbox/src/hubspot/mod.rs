//! The HubSpot emulator: OAuth, CRM objects v3 with search and merge, associations
//! v4, rate limits, and signed webhooks for every change, as `PROVIDERS.md` describes
//! HubSpot.
//!
//! One server answers for both `app.hubspot.com` (authorize) and
//! `api.hubapi.com` (everything else).

pub mod api;
pub mod delivery;
pub mod limits;
pub mod oauth;
pub mod search;
pub mod store;
pub mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{get, post, put};
use axum::Router;
use rand::Rng;
use serde_json::{json, Value};

use crate::data::Generator;
use crate::faults::{FaultState, Faults};
use crate::server::{serve, Running};
use delivery::{DeliveryConfig, Outbox};
use limits::Limits;
use oauth::Tokens;
use store::{now_ms, Store, StoreError};
use webhooks::Signature;

/// How the emulated portal behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub contacts: usize,
    pub companies: usize,
    pub deals: usize,
    pub faults: Faults,
    pub client_id: String,
    pub client_secret: String,
    pub portal_id: u64,
    pub app_id: u64,
    /// How long access tokens live (HubSpot: 30 minutes).
    pub token_ttl: Duration,
    /// Requests per rolling 10 s: 100 for a public OAuth app (and free/starter private
    /// apps), 190 for professional/enterprise private apps.
    pub per_ten_seconds: u32,
    /// A private app's daily cap (250k / 625k / 1M); `None`, the default, for OAuth
    /// apps, which have none and get no `X-HubSpot-RateLimit-Daily*` headers.
    pub per_day: Option<u64>,
    pub search_per_second: u32,
    /// How long a write takes to show in search.
    pub index_lag: Duration,
    pub webhook_target: Option<String>,
    /// Every delivery carries v3 and a legacy `X-HubSpot-Signature`: v2 when this is
    /// [`Signature::V2`], else v1.
    pub webhook_signature: Signature,
    pub webhook_batch_delay: Duration,
    pub webhook_retry_base: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            contacts: 50,
            companies: 10,
            deals: 20,
            faults: Faults::default(),
            client_id: "hubspot-sandbox-client".into(),
            client_secret: "hubspot-sandbox-secret".into(),
            portal_id: 62515,
            app_id: 54321,
            token_ttl: Duration::from_secs(30 * 60),
            per_ten_seconds: 100,
            per_day: None,
            search_per_second: 5,
            index_lag: Duration::from_secs(2),
            webhook_target: None,
            webhook_signature: Signature::V3,
            webhook_batch_delay: Duration::from_millis(50),
            webhook_retry_base: Duration::from_secs(1),
        }
    }
}

/// A running HubSpot portal.
#[derive(Debug)]
pub struct HubSpotSandbox {
    pub config: Config,
    pub store: Mutex<Store>,
    pub tokens: Mutex<Tokens>,
    pub limits: Limits,
    pub webhooks: Outbox,
    faults: Arc<FaultState>,
    ready_token: (String, String),
    mutation_step: AtomicU64,
}

fn props(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

impl HubSpotSandbox {
    /// Builds the portal and seeds it. Needs a Tokio runtime (webhook delivery).
    pub fn new(config: Config) -> Arc<Self> {
        let faults = FaultState::new(config.faults.clone(), config.seed, limits::storm);
        let mut tokens = Tokens::default();
        let ready_token = tokens.issue(config.token_ttl.as_millis() as i64);
        let webhooks = Outbox::spawn(
            DeliveryConfig {
                target: config.webhook_target.clone(),
                signature: config.webhook_signature,
                client_secret: config.client_secret.clone(),
                portal_id: config.portal_id,
                app_id: config.app_id,
                batch_delay: config.webhook_batch_delay,
                retry_base: config.webhook_retry_base,
            },
            faults.clone(),
        );
        let hs = Self {
            limits: Limits::new(
                config.per_ten_seconds,
                config.per_day,
                config.search_per_second,
            ),
            store: Mutex::new(Store::new(config.index_lag.as_millis() as i64)),
            tokens: Mutex::new(tokens),
            webhooks,
            faults,
            ready_token,
            mutation_step: AtomicU64::new(0),
            config,
        };
        hs.seed();
        Arc::new(hs)
    }

    /// Deterministic records: the same seed gives the same portal. Seeding happens
    /// before any webhook target can hear it and sends nothing.
    fn seed(&self) {
        let g = Generator::new(self.config.seed);
        let base = 1_700_000_000_000i64;
        let mut store = self.store.lock().expect("store lock");
        let lag = std::mem::replace(&mut store.index_lag_ms, 0);
        let mut companies = Vec::with_capacity(self.config.companies);
        for i in 0..self.config.companies as u64 {
            let o = g.org(i);
            let p = props(&[
                ("name", o.name),
                ("domain", o.domain),
                ("industry", o.industry),
                ("city", o.city),
                ("phone", o.phone),
            ]);
            companies.push(store.create("companies", p, base + i as i64).0);
        }
        let mut contacts = Vec::with_capacity(self.config.contacts);
        for i in 0..self.config.contacts as u64 {
            let p = g.person(i);
            let props = props(&[
                ("email", p.email),
                ("firstname", p.first_name),
                ("lastname", p.last_name),
                ("phone", p.phone),
                ("jobtitle", p.job_title),
                ("lifecyclestage", "lead".into()),
            ]);
            let id = store.create("contacts", props, base + i as i64).0;
            if !companies.is_empty() {
                store.associate(
                    "contacts",
                    id,
                    "companies",
                    companies[i as usize % companies.len()],
                );
            }
            contacts.push(id);
        }
        for i in 0..self.config.deals as u64 {
            let d = g.opportunity(i);
            let props = props(&[
                ("dealname", d.name),
                ("amount", d.amount.to_string()),
                ("dealstage", d.stage),
                ("pipeline", "default".into()),
            ]);
            let id = store.create("deals", props, base + i as i64).0;
            if !contacts.is_empty() {
                store.associate(
                    "deals",
                    id,
                    "contacts",
                    contacts[i as usize % contacts.len()],
                );
            }
            if !companies.is_empty() {
                store.associate(
                    "deals",
                    id,
                    "companies",
                    companies[i as usize % companies.len()],
                );
            }
        }
        store.index_lag_ms = lag;
    }

    pub fn router(self: &Arc<Self>) -> Router {
        let crm = Router::new()
            .route("/crm/v3/objects/{ty}", get(api::list).post(api::create))
            .route("/crm/v3/objects/{ty}/search", post(api::search))
            .route("/crm/v3/objects/{ty}/merge", post(api::merge))
            .route("/crm/v3/objects/{ty}/batch/{action}", post(api::batch))
            .route(
                "/crm/v3/objects/{ty}/{id}",
                get(api::get).patch(api::update).delete(api::archive),
            )
            .route(
                "/crm/v4/objects/{ty}/{id}/associations/{to}",
                get(api::associations),
            )
            .route(
                "/crm/v4/associations/{from}/{to}/batch/read",
                post(api::associations_batch),
            )
            .route(
                "/crm/v4/objects/{from}/{from_id}/associations/default/{to}/{to_id}",
                put(api::associate_default),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                api::guard,
            ));
        Router::new()
            .route("/oauth/authorize", get(oauth::authorize))
            .route("/oauth/v1/token", post(oauth::token_endpoint))
            .route("/oauth/v1/access-tokens/{token}", get(oauth::introspect))
            .merge(crm)
            .layer(axum::middleware::from_fn_with_state(
                self.faults.clone(),
                crate::faults::apply,
            ))
            .with_state(self.clone())
    }

    pub async fn start(config: Config, addr: SocketAddr) -> std::io::Result<(Arc<Self>, Running)> {
        let hs = Self::new(config);
        let running = serve(hs.router(), addr).await?;
        Ok((hs, running))
    }

    /// What a client needs to use this portal.
    pub fn credentials(&self, base_url: &str) -> Value {
        json!({
            "provider": "hubspot",
            "base_url": base_url,
            "api_url": base_url,
            "auth_url": base_url,
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "access_token": self.ready_token.0,
            "refresh_token": self.ready_token.1,
            "portal_id": self.config.portal_id,
            "app_id": self.config.app_id,
            "webhook_signature": format!("{:?}", self.config.webhook_signature).to_lowercase(),
        })
    }

    pub fn faults(&self) -> &Arc<FaultState> {
        &self.faults
    }

    /// Makes every access token expired (as if 30 minutes had passed).
    pub fn expire_access_tokens(&self) {
        let mut t = self.tokens.lock().expect("tokens lock");
        for expiry in t.access.values_mut() {
            *expiry = now_ms() - 1000;
        }
    }

    /// Revokes every refresh token (the app was uninstalled).
    pub fn revoke_refresh_tokens(&self) {
        self.tokens.lock().expect("tokens lock").refresh.clear();
    }

    pub fn create(&self, ty: &'static str, properties: BTreeMap<String, String>) -> u64 {
        // Webhooks carry the time of the change itself, as lastmodifieddate does.
        let at = now_ms();
        let (id, changes) = self
            .store
            .lock()
            .expect("store lock")
            .create(ty, properties, at);
        self.webhooks.emit(&changes, at);
        id
    }

    pub fn update(
        &self,
        ty: &'static str,
        id: u64,
        properties: &BTreeMap<String, String>,
    ) -> Result<Value, StoreError> {
        let at = now_ms();
        let (v, changes) = {
            let mut store = self.store.lock().expect("store lock");
            let (id, changes) = store.update(ty, id, properties, at)?;
            let record = &store.objects[ty][&id];
            let all: Vec<String> = record.properties.keys().cloned().collect();
            (record.to_json(ty, &all), changes)
        };
        self.webhooks.emit(&changes, at);
        Ok(v)
    }

    /// Links two records (both ways), as a user would in HubSpot; an
    /// `associationChange` webhook is sent when they were not linked.
    pub fn associate(&self, from: &'static str, from_id: u64, to: &'static str, to_id: u64) {
        let changes = self
            .store
            .lock()
            .expect("store lock")
            .associate(from, from_id, to, to_id);
        self.webhooks.emit(&changes, now_ms());
    }

    pub fn archive(&self, ty: &'static str, id: u64) {
        // Webhooks carry the time of the change itself, as lastmodifieddate does.
        let at = now_ms();
        let changes = self.store.lock().expect("store lock").archive(ty, id, at);
        self.webhooks.emit(&changes, at);
    }

    pub fn restore(&self, ty: &'static str, id: u64) {
        // Webhooks carry the time of the change itself, as lastmodifieddate does.
        let at = now_ms();
        let changes = self.store.lock().expect("store lock").restore(ty, id, at);
        self.webhooks.emit(&changes, at);
    }

    pub fn merge(&self, ty: &'static str, primary: u64, merged: u64) -> Result<Value, StoreError> {
        // Webhooks carry the time of the change itself, as lastmodifieddate does.
        let at = now_ms();
        let (v, changes) = {
            let mut store = self.store.lock().expect("store lock");
            let (id, changes) = store.merge(ty, primary, merged, at)?;
            let record = &store.objects[ty][&id];
            let all: Vec<String> = record.properties.keys().cloned().collect();
            (record.to_json(ty, &all), changes)
        };
        self.webhooks.emit(&changes, at);
        Ok(v)
    }

    /// Live links from `from` records to `to` records: (from id, to id).
    pub fn links(&self, from: &str, to: &str) -> std::collections::BTreeSet<(u64, u64)> {
        let store = self.store.lock().expect("store lock");
        let Some(table) = store.objects.get(from) else {
            return Default::default();
        };
        table
            .values()
            .filter(|r| r.archived_at.is_none() && r.merged_into.is_none())
            .flat_map(|r| {
                store
                    .associated(from, r.id, to)
                    .into_iter()
                    .map(move |t| (r.id, t))
            })
            .collect()
    }

    /// Live records of a type, by id: what the portal holds now.
    pub fn snapshot(&self, ty: &str) -> BTreeMap<u64, BTreeMap<String, String>> {
        let store = self.store.lock().expect("store lock");
        store
            .objects
            .get(ty)
            .map(|t| {
                t.values()
                    .filter(|r| r.archived_at.is_none() && r.merged_into.is_none())
                    .map(|r| (r.id, r.properties.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One step of the mutation driver: `n` changes drawn from the seed — creations,
    /// property updates, deletions, restores and merges of contacts, companies and
    /// deals.
    pub fn mutate(&self, n: usize) {
        let g = Generator::new(self.config.seed);
        for _ in 0..n {
            let step = self.mutation_step.fetch_add(1, Ordering::Relaxed);
            let mut rng = g.rng(99, step);
            let ty: &'static str = match rng.gen_range(0..10) {
                0..=5 => "contacts",
                6..=7 => "companies",
                _ => "deals",
            };
            let roll = rng.gen_range(0..100);
            let picked = self.pick_live(ty, &mut rng);
            if picked.is_none() || roll < 30 {
                let i = 1_000_000 + step;
                let p = match ty {
                    "contacts" => {
                        let p = g.person(i);
                        props(&[
                            ("email", p.email),
                            ("firstname", p.first_name),
                            ("lastname", p.last_name),
                            ("phone", p.phone),
                        ])
                    }
                    "companies" => {
                        let o = g.org(i);
                        props(&[("name", o.name), ("domain", o.domain)])
                    }
                    _ => {
                        let d = g.opportunity(i);
                        props(&[
                            ("dealname", d.name),
                            ("amount", d.amount.to_string()),
                            ("dealstage", d.stage),
                        ])
                    }
                };
                self.create(ty, p);
                continue;
            }
            let Some(id) = picked else { continue };
            match roll {
                30..=84 => {
                    let (name, value) = match ty {
                        "contacts" => ("jobtitle", g.person(step).job_title),
                        "companies" => ("city", g.org(step).city),
                        _ => ("amount", g.opportunity(step).amount.to_string()),
                    };
                    let _ = self.update(ty, id, &props(&[(name, value)]));
                }
                85..=92 => self.archive(ty, id),
                93..=95 => {
                    let archived = {
                        let store = self.store.lock().expect("store lock");
                        store.objects[ty]
                            .values()
                            .find(|r| r.archived_at.is_some())
                            .map(|r| r.id)
                    };
                    if let Some(a) = archived {
                        self.restore(ty, a);
                    }
                }
                _ => {
                    if let Some(other) = self.pick_live(ty, &mut rng).filter(|o| *o != id) {
                        let _ = self.merge(ty, id, other);
                    }
                }
            }
        }
    }

    /// A live record of `ty` drawn with `rng`, found by probing the table's keys so that
    /// a step stays cheap with 100,000 records; `None` when there is none.
    fn pick_live(&self, ty: &str, rng: &mut impl Rng) -> Option<u64> {
        let store = self.store.lock().expect("store lock");
        let table = store.objects.get(ty)?;
        let (first, last) = (*table.keys().next()?, *table.keys().next_back()?);
        let live = |r: &store::Record| r.archived_at.is_none() && r.merged_into.is_none();
        for _ in 0..16 {
            let probe = rng.gen_range(first..=last);
            if let Some((id, r)) = table.range(probe..).next() {
                if live(r) {
                    return Some(*id);
                }
            }
        }
        // Mostly dead records: count the live ones out, cloning nothing.
        let n = table.values().filter(|r| live(r)).count();
        if n == 0 {
            return None;
        }
        let k = rng.gen_range(0..n);
        table.values().filter(|r| live(r)).nth(k).map(|r| r.id)
    }

    /// Runs the mutation driver at about `per_sec` changes a second until aborted.
    pub fn spawn_mutations(self: &Arc<Self>, per_sec: f64) -> tokio::task::JoinHandle<()> {
        crate::driver::spawn(self, per_sec, Self::mutate)
    }
}
