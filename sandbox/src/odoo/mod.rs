//! The Odoo emulator: JSON-RPC (`/jsonrpc`: `common`, `object`, `db`), JSON-2 (Odoo
//! 19: `/json/2/<model>/<method>`), and the version routes, over an in-memory database
//! of `res.partner`, `crm.lead`, `crm.stage`, `mail.activity`, `mail.message` and the
//! few models around them, as `PROVIDERS.md` describes Odoo.
//!
//! The point is `write_date`, which polling depends on:
//! - it is the start of the writing transaction, stored to the microsecond and read
//!   over RPC as `YYYY-MM-DD HH:MM:SS` — so many records share one rendered second,
//!   and `write_date > 'S'` still matches rows written during second `S` (their
//!   hidden microseconds are greater), as Postgres compares them;
//! - `write()` bumps it even when no value changes;
//! - a long transaction ([`OdooSandbox::begin_transaction`]) stamps early and becomes
//!   visible only when it commits, so a strict `write_date > last` poll misses it and
//!   only an overlap window finds it;
//! - deletes (`unlink`, done activities) leave nothing behind: compare id sets;
//!   archiving (`active = false`) hides records from searches unless the domain
//!   mentions `active` or the context has `active_test: false`;
//! - deleting a record empties many2one fields pointing at it without touching those
//!   records' `write_date` (`ON DELETE SET NULL`).
//!
//! Where `PROVIDERS.md` is silent the emulator does what Odoo does; each file says
//! which facts it keeps: `rpc.rs` (authentication, services), `json2.rs`,
//! `methods.rs` (the ORM methods), `mail.rs` (messages, activities), `store.rs`
//! (read/write rules), `domain.rs`, `order.rs`, `transactions.rs`, `seed.rs` (what a
//! fresh database holds), `mutations.rs` (the driver), `errors.rs` (error shapes),
//! `models.rs` (fields; `mobile` exists on Odoo 17 only, as 18.2 removed it).
//!
//! Not emulated: XML-RPC (`/xmlrpc/2/*`), row locks between concurrent
//! transactions, access rights beyond the API user, one2many fields, and ORM
//! methods other than those `methods.rs` lists.
//!
//! Test hooks: [`OdooSandbox::begin_transaction`], [`OdooSandbox::ids`],
//! [`OdooSandbox::set_clock`] / [`OdooSandbox::advance_clock`],
//! [`OdooSandbox::stored_write_date`].

pub mod errors;
pub mod transactions;

mod clock;
mod domain;
mod json2;
mod mail;
mod methods;
mod models;
mod mutations;
mod order;
mod rpc;
mod seed;
mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Value};

use crate::faults::{self, FaultState, Faults};
use crate::server::{serve, Running};
pub use errors::OdooError;
use mutations::Driver;
use store::{Env, Store};
pub use transactions::TxHandle;

/// Which Odoo the sandbox pretends to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OdooVersion {
    /// JSON-RPC only.
    V17,
    /// Odoo Online's release between 18 and 19 (`saas~18.2`): JSON-RPC only. Its
    /// version info starts with the text `"saas~18"`, not a number.
    Saas18,
    /// JSON-RPC and JSON-2.
    V19,
}

impl OdooVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            OdooVersion::V17 => "17.0",
            OdooVersion::Saas18 => "saas~18.2",
            OdooVersion::V19 => "19.0",
        }
    }

    pub fn major(self) -> u32 {
        match self {
            OdooVersion::V17 => 17,
            OdooVersion::Saas18 => 18,
            OdooVersion::V19 => 19,
        }
    }

    /// `server_version_info`, as Odoo's `release.version_info`: a SaaS release
    /// names its series in the first place (`"saas~18"`), and Odoo Online is the
    /// Enterprise edition (`"e"`).
    pub fn info(self) -> serde_json::Value {
        match self {
            OdooVersion::Saas18 => serde_json::json!(["saas~18", 2, 0, "final", 0, "e"]),
            other => serde_json::json!([other.major(), 0, 0, "final", 0, ""]),
        }
    }

    pub fn has_json2(self) -> bool {
        self == OdooVersion::V19
    }
}

/// How the emulated database starts.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Generated contacts (persons), besides Odoo's own partners.
    pub contacts: usize,
    /// Generated companies.
    pub companies: usize,
    /// Generated leads and opportunities.
    pub deals: usize,
    pub faults: Faults,
    pub database: String,
    /// The API user's login.
    pub login: String,
    /// The API user's key (used in place of the password, and as JSON-2 bearer).
    pub api_key: String,
    pub version: OdooVersion,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            contacts: 50,
            companies: 10,
            deals: 20,
            faults: Faults::default(),
            database: "crmsync".into(),
            login: "admin@example.com".into(),
            api_key: "odoo-sandbox-key-5f3c9a7e1b2d4c6e8a0f1e3d5c7b9a2e4f6d8c0a".into(),
            version: OdooVersion::V19,
        }
    }
}

/// Odoo behind a reverse proxy: a 429 with a plain body, no `Retry-After`.
fn too_many_requests() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "429 Too Many Requests\n",
    )
        .into_response()
}

/// A running emulated Odoo database.
#[derive(Debug)]
pub struct OdooSandbox {
    database: String,
    login: String,
    /// The user's API key: revoked and replaced by `rotate_api_key`.
    api_key: std::sync::RwLock<String>,
    version: OdooVersion,
    store: Arc<RwLock<Store>>,
    clock: clock::Clock,
    faults: Arc<FaultState>,
    driver: Mutex<Driver>,
}

impl OdooSandbox {
    /// Builds the database (deterministic for a seed; 100k partners take seconds).
    pub fn new(config: Config) -> Arc<Self> {
        let clock = clock::Clock::default();
        let mut db = Store::new(config.version.major());
        seed::seed(&mut db, &config, clock.now());
        Arc::new(Self {
            faults: FaultState::new(config.faults.clone(), config.seed, too_many_requests),
            driver: Mutex::new(Driver::new(config.seed, config.contacts, config.deals)),
            database: config.database,
            login: config.login,
            api_key: std::sync::RwLock::new(config.api_key),
            version: config.version,
            store: Arc::new(RwLock::new(db)),
            clock,
        })
    }

    /// Every route, behind the faults middleware.
    pub fn router(self: &Arc<Self>) -> Router {
        let mut router = Router::new()
            .route("/jsonrpc", post(rpc::jsonrpc))
            .route(
                "/web/webclient/version_info",
                get(rpc::webclient_version_info).post(rpc::webclient_version_info),
            )
            .route("/web/version", get(rpc::web_version));
        if self.version.has_json2() {
            router = router.route("/json/2/{model}/{method}", any(json2::handle));
        }
        router
            .fallback(rpc::not_found)
            .with_state(self.clone())
            .layer(axum::middleware::from_fn_with_state(
                self.faults.clone(),
                faults::apply,
            ))
    }

    /// Builds the database and serves it on `addr` (port 0 allowed).
    pub async fn start(config: Config, addr: SocketAddr) -> std::io::Result<(Arc<Self>, Running)> {
        let sandbox = Self::new(config);
        let running = serve(sandbox.router(), addr).await?;
        Ok((sandbox, running))
    }

    /// What a client needs to connect.
    pub fn credentials(&self, base_url: &str) -> Value {
        json!({
            "provider": "odoo",
            "base_url": base_url,
            "database": self.database,
            "login": self.login,
            "api_key": self.api_key(),
            "uid": seed::ADMIN_UID,
            "version": self.version.as_str(),
            "json2": self.version.has_json2(),
        })
    }

    /// The user's API key now.
    pub fn api_key(&self) -> String {
        self.api_key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether `given` is the user's API key (in constant time).
    pub(crate) fn is_api_key(&self, given: Option<&str>) -> bool {
        crate::secret_eq(given, &self.api_key())
    }

    /// The user revokes the API key and makes a new one (as on an expired key):
    /// the old one is refused from now on. Returns the new key.
    pub fn rotate_api_key(&self) -> String {
        let mut key = self
            .api_key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *key = format!("odoo-sandbox-key-{}", uuid::Uuid::new_v4().simple());
        key.clone()
    }

    pub fn faults(&self) -> &Arc<FaultState> {
        &self.faults
    }

    pub fn version(&self) -> OdooVersion {
        self.version
    }

    /// The API user's uid.
    pub fn uid(&self) -> i64 {
        seed::ADMIN_UID
    }

    /// Runs `n` steps of the mutation driver, as another user (Marc Demo, uid 6): edits,
    /// no-op writes, bursts sharing one `write_date`, creates and deletes of contacts
    /// and leads, lost leads, activities scheduled and done, notes, and long
    /// transactions that commit a few steps later with their early stamp.
    pub fn mutate(&self, n: usize) {
        let mut driver = self.driver.lock().expect("driver lock");
        for _ in 0..n {
            let env = Env {
                uid: seed::DEMO_UID,
                now: self.clock.now(),
            };
            driver.step(&self.store, env);
        }
    }

    /// Long transactions the driver has opened and not yet committed.
    pub fn open_driver_transactions(&self) -> usize {
        self.driver.lock().expect("driver lock").open_transactions()
    }

    /// Runs the mutation driver at about `per_sec` steps a second until aborted or
    /// the sandbox is dropped.
    pub fn spawn_mutations(self: &Arc<Self>, per_sec: f64) -> tokio::task::JoinHandle<()> {
        crate::driver::spawn(self, per_sec, Self::mutate)
    }

    /// Opens a transaction as another user (Marc Demo), stamped now; see
    /// [`TxHandle`].
    pub fn begin_transaction(&self) -> TxHandle {
        TxHandle::begin(self.store.clone(), seed::DEMO_UID, self.clock.now())
    }

    /// Committed ids of `model`, archived records included, ascending.
    pub fn ids(&self, model: &str) -> Vec<i64> {
        self.store.read().expect("store lock").ids(model)
    }

    /// One field of every committed record of `model`, archived ones included.
    pub fn column(&self, model: &str, field: &str) -> Vec<Value> {
        let db = self.store.read().expect("store lock");
        db.ids(model)
            .into_iter()
            .map(|id| db.stored(model, id, field))
            .collect()
    }

    /// A record's `write_date` as stored, microseconds included.
    pub fn stored_write_date(&self, model: &str, id: i64) -> Option<NaiveDateTime> {
        let db = self.store.read().expect("store lock");
        let v = db.stored(model, id, "write_date");
        v.as_str().and_then(clock::parse_datetime)
    }

    /// Freezes the clock at `at`, or lets it run again with `None`.
    pub fn set_clock(&self, at: Option<DateTime<Utc>>) {
        self.clock.set(at);
    }

    /// Moves the clock on by `by`, freezing it.
    pub fn advance_clock(&self, by: chrono::Duration) {
        self.clock.advance(by);
    }

    /// The database's current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}
