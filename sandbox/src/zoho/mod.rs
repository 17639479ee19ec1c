//! The Zoho CRM emulator: Zoho Accounts OAuth per data centre, the v8 records API
//! (list, get, insert, update, upsert, delete, deleted, search), the org, COQL, notification
//! channels with callbacks, API credits and concurrency, as `PROVIDERS.md` describes
//! Zoho CRM.
//!
//! One HTTP server plays every data centre: the accounts server of `dc` at
//! `{base}/{dc}/accounts` and its API domain at `{base}/{dc}/api`, for `dc` in `com`,
//! `eu`, `in`, `com.au`, `jp`, `com.cn`, `ca`, `sa` ([`DataCentre`]). There is one org;
//! it lives in one data centre (`.com` unless moved with
//! [`ZohoSandbox::set_data_centre`]), and a token works only on the API domain of the
//! data centre that issued it.
//!
//! Where `PROVIDERS.md` is silent the emulator does what Zoho does or documents (see
//! each module), notably: the consent redirect's `location` is Zoho's (`us` for `.com`,
//! `au`, `cn`); lists default to `sort_by=id&sort_order=desc`; date-times are answered
//! in the org's zone (`+05:30`) and kept to the millisecond; a misspelt field API name
//! in a write is refused; deals get a probability from their stage; the recycle bin
//! keeps deleted records until [`ZohoSandbox::empty_recycle_bin`]. Errors follow
//! Zoho's published v8 examples (`param_name` in `REQUIRED_PARAM_MISSING`, ...).

mod auth;
mod callbacks;
mod coql;
mod dc;
mod error;
mod filter;
mod input;
mod limits;
mod mutations;
mod notifications;
mod oauth;
mod paging;
mod records;
mod render;
mod schema;
mod search;
mod seed;
mod store;
mod writes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::http::HeaderMap;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value as Json};

use crate::data::Generator;
use crate::faults::{self, FaultState, Faults};
use crate::server::{serve, Running};

pub use dc::DataCentre;
pub use schema::Module;

use error::ApiError;
use limits::Limits;
use notifications::Channels;
use oauth::Tokens;
use paging::PageTokens;
use store::Store;

/// How the emulated org behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub contacts: usize,
    /// Accounts.
    pub companies: usize,
    pub deals: usize,
    pub faults: Faults,
    pub client_id: String,
    pub client_secret: String,
    /// API credits per rolling 24 hours (Zoho: 5,000 free, 50,000 + per user paid).
    pub credits_per_day: u64,
    /// Requests in flight per access token (Zoho: 5–25 by edition).
    pub concurrency: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            contacts: 50,
            companies: 10,
            deals: 20,
            faults: Faults::default(),
            client_id: "zoho-sandbox-client".into(),
            client_secret: "zoho-sandbox-secret".into(),
            credits_per_day: 50_000,
            concurrency: 10,
        }
    }
}

/// Every scope the emulator knows; the ready token of [`ZohoSandbox::credentials`]
/// has them all.
pub const ALL_SCOPES: &str = "ZohoCRM.modules.ALL,ZohoCRM.coql.READ,ZohoCRM.notifications.ALL,ZohoCRM.settings.ALL,ZohoCRM.users.READ,ZohoCRM.org.READ";

/// The access and refresh token handed out by `credentials`.
#[derive(Debug, Clone)]
struct Ready {
    dc: DataCentre,
    access: String,
    refresh: String,
}

/// A running Zoho CRM org.
#[derive(Debug)]
pub struct ZohoSandbox {
    config: Config,
    store: RwLock<Store>,
    tokens: Mutex<Tokens>,
    limits: Arc<Limits>,
    pages: Mutex<PageTokens>,
    channels: Mutex<Channels>,
    faults: Arc<FaultState>,
    http: reqwest::Client,
    home: RwLock<DataCentre>,
    ready: Mutex<Option<Ready>>,
    mutation_step: AtomicU64,
    callbacks_sent: AtomicU64,
    callbacks_dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `scheme://host` as the client reached us (`X-Forwarded-Proto` honoured).
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let scheme = header("x-forwarded-proto").unwrap_or("http");
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

impl ZohoSandbox {
    /// Builds the org and seeds it deterministically from `config.seed`.
    pub fn new(config: Config) -> Arc<Self> {
        let mut store = Store::new(config.seed);
        seed::seed(
            &mut store,
            &Generator::new(config.seed),
            config.contacts,
            config.companies,
            config.deals,
        );
        Arc::new(Self {
            faults: FaultState::new(
                config.faults.clone(),
                config.seed,
                error::too_many_requests_response,
            ),
            limits: Limits::new(config.credits_per_day, config.concurrency),
            store: RwLock::new(store),
            tokens: Mutex::new(Tokens::default()),
            pages: Mutex::new(PageTokens::default()),
            channels: Mutex::new(Channels::default()),
            http: reqwest::Client::new(),
            home: RwLock::new(DataCentre::Us),
            ready: Mutex::new(None),
            mutation_step: AtomicU64::new(0),
            callbacks_sent: AtomicU64::new(0),
            callbacks_dropped: AtomicU64::new(0),
            config,
        })
    }

    /// Every route of every data centre, behind the fault injection.
    pub fn router(self: &Arc<Self>) -> Router {
        let v8 = "/{dc}/api/crm/v8";
        let api = Router::new()
            .route(&format!("{v8}/coql"), post(coql::query))
            .route(&format!("{v8}/org"), get(records::org))
            .route(
                &format!("{v8}/actions/watch"),
                get(notifications::list)
                    .post(notifications::enable)
                    .put(notifications::update)
                    .patch(notifications::patch)
                    .delete(notifications::disable),
            )
            .route(
                &format!("{v8}/{{module}}"),
                get(records::list)
                    .post(writes::insert)
                    .put(writes::update_many)
                    .delete(writes::delete_many),
            )
            .route(&format!("{v8}/{{module}}/upsert"), post(writes::upsert))
            .route(&format!("{v8}/{{module}}/deleted"), get(records::deleted))
            .route(&format!("{v8}/{{module}}/search"), get(search::search))
            .route(
                &format!("{v8}/{{module}}/{{id}}"),
                get(records::get_one)
                    .put(writes::update_one)
                    .delete(writes::delete_one),
            )
            .route_layer(from_fn_with_state(self.clone(), auth::guard));
        Router::new()
            .route("/{dc}/accounts/oauth/v2/auth", get(oauth::authorize))
            .route("/{dc}/accounts/oauth/v2/token", post(oauth::token))
            .route("/{dc}/accounts/oauth/v2/token/revoke", post(oauth::revoke))
            .merge(api)
            .fallback(|| async { ApiError::invalid_url() })
            .method_not_allowed_fallback(|| async { ApiError::invalid_method() })
            .layer(from_fn_with_state(self.faults.clone(), faults::apply))
            .with_state(self.clone())
    }

    /// Builds the org and serves it on `addr` (port 0 picks one).
    pub async fn start(config: Config, addr: SocketAddr) -> std::io::Result<(Arc<Self>, Running)> {
        let sb = Self::new(config);
        let running = serve(sb.router(), addr).await?;
        Ok((sb, running))
    }

    /// What a client needs to use this org, with a ready token (all scopes) for the
    /// org's data centre.
    pub fn credentials(&self, base_url: &str) -> Json {
        let dc = self.home_dc();
        let ready = {
            let mut ready = lock(&self.ready);
            let fresh = ready.as_ref().is_some_and(|r| {
                r.dc == dc
                    && self
                        .tokens()
                        .access(&r.access)
                        .is_some_and(|a| a.expires > store::now_ms())
            });
            if !fresh {
                let (access, refresh) =
                    self.tokens()
                        .issue(dc, ALL_SCOPES, true, &self.config.client_id);
                *ready = Some(Ready {
                    dc,
                    access,
                    refresh: refresh.unwrap_or_default(),
                });
            }
            ready.clone().expect("a ready token")
        };
        json!({
            "provider": "zoho",
            "base_url": base_url,
            "accounts_url": dc.accounts_url(base_url),
            "api_domain": dc.api_domain(base_url),
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
            "access_token": ready.access,
            "refresh_token": ready.refresh,
            "org_id": self.org_id(),
            "data_centre": dc.suffix(),
        })
    }

    pub fn faults(&self) -> &Arc<FaultState> {
        &self.faults
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The org's id (Zoho's `zgid`).
    pub fn org_id(&self) -> String {
        (self.id_prefix() / 1_000_000_000_000 * 100 + 7).to_string()
    }

    /// Makes every access token expired, as if an hour had passed.
    pub fn expire_access_tokens(&self) {
        self.tokens().expire_access_tokens();
    }

    /// Makes every page token expired, as if a day had passed.
    pub fn expire_page_tokens(&self) {
        lock(&self.pages).expire_all();
    }

    /// Makes every notification channel expired.
    pub fn expire_watch_channels(&self) {
        self.channels().expire_all();
    }

    /// Moves the org to another data centre: consent then names it, and only its
    /// accounts server and API domain accept the org's codes and tokens.
    pub fn set_data_centre(&self, dc: DataCentre) {
        *self.home.write().unwrap_or_else(PoisonError::into_inner) = dc;
    }

    /// Empties the recycle bin: its records become permanently deleted.
    pub fn empty_recycle_bin(&self) {
        self.store_mut().empty_recycle_bin();
    }

    /// Live records of a module (by API name, any case); 0 for an unknown module.
    pub fn record_count(&self, module: &str) -> usize {
        Module::parse(module).map_or(0, |m| self.store().table(m).records.len())
    }

    /// A live record with every field, as `GET /{Module}/{id}` answers it.
    pub fn record(&self, module: &str, id: &str) -> Option<Json> {
        let module = Module::parse(module)?;
        let store = self.store();
        let record = store.record(module, id.parse().ok()?)?;
        Some(render::record_json(
            &store,
            module,
            record,
            &module.all_columns(),
        ))
    }

    /// Every live record of a module with every field, in id order (empty for an
    /// unknown module): what a synced copy should hold.
    pub fn records(&self, module: &str) -> Vec<Json> {
        let Some(module) = Module::parse(module) else {
            return Vec::new();
        };
        let store = self.store();
        let columns = module.all_columns();
        store
            .table(module)
            .records
            .values()
            .map(|r| render::record_json(&store, module, r, &columns))
            .collect()
    }

    /// The live notification channels: id, notify URL and expiry (ms).
    pub fn live_channels(&self) -> Vec<(String, String, i64)> {
        self.channels()
            .live()
            .into_iter()
            .map(|c| (c.id, c.notify_url, c.expiry))
            .collect()
    }

    /// API credits spent in the last 24 hours, and left.
    pub fn credits_used(&self) -> u64 {
        self.limits.credits_used()
    }

    pub fn credits_remaining(&self) -> u64 {
        self.limits.credits_remaining()
    }

    /// Requests refused (429) because the credits were spent.
    pub fn credit_refusals(&self) -> u64 {
        self.limits.credit_refusals()
    }

    /// Sets the org's API credits per rolling 24 hours (a spent allowance: at most
    /// what is used).
    pub fn set_credits_per_day(&self, credits: u64) {
        self.limits.set_credits_per_day(credits);
    }

    /// Notification callbacks posted so far (whatever the receiver answered).
    pub fn callbacks_sent(&self) -> u64 {
        self.callbacks_sent.load(Ordering::Relaxed)
    }

    /// Notification callbacks lost on purpose by `drop-webhooks` faults.
    pub fn callbacks_dropped(&self) -> u64 {
        self.callbacks_dropped.load(Ordering::Relaxed)
    }

    /// While held, authorised API requests wait, keeping their concurrency place.
    pub fn hold_requests(&self, hold: bool) {
        self.limits.set_hold(hold);
    }

    /// API requests holding a concurrency place now.
    pub fn requests_in_flight(&self) -> usize {
        self.limits.requests_in_flight()
    }

    fn home_dc(&self) -> DataCentre {
        *self.home.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn id_prefix(&self) -> u64 {
        self.store().id_prefix
    }

    fn store(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn store_mut(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn tokens(&self) -> MutexGuard<'_, Tokens> {
        lock(&self.tokens)
    }

    fn pages(&self) -> MutexGuard<'_, PageTokens> {
        lock(&self.pages)
    }

    fn channels(&self) -> MutexGuard<'_, Channels> {
        lock(&self.channels)
    }
}
