//! Configuration, read once from the environment.
//!
//! Every variable is listed in [`VARIABLES`], which `crmsync --help` and the README
//! show. A missing or malformed value stops start-up with one line naming the
//! variable and what was expected; secret values are never printed.

use std::time::Duration;

use crmsync_adapters::Secret;
use crmsync_schema::Subjects;

/// One environment variable: name, default, meaning.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

const fn var(name: &'static str, default: &'static str, help: &'static str) -> Variable {
    Variable {
        name,
        default,
        help,
    }
}

/// Every variable crmsync reads.
pub const VARIABLES: &[Variable] = &[
    var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/crmsync", "Postgres URL; the database is created if absent"),
    var("NATS_URL", "nats://127.0.0.1:4222", "NATS server(s) with JetStream, comma-separated"),
    var("PORT", "8080", "HTTP port"),
    var("CRM_BIND", "0.0.0.0", "HTTP bind address"),
    var("CRM_PUBLIC_URL", "(from the Host header)", "the URL providers call, e.g. https://crm.example.com; webhook signatures and OAuth redirects use it"),
    var("CRM_API_TOKEN", "(none)", "bearer token of the control API (secret)"),
    var("ENCRYPTION_KEY", "(none)", "age identity (AGE-SECRET-KEY-1…) that encrypts stored tokens; several, one per line, to rotate (secret)"),
    var("CRM_HUBSPOT_CLIENT_ID", "(none)", "HubSpot app client id"),
    var("CRM_HUBSPOT_CLIENT_SECRET", "(none)", "HubSpot app client secret; HubSpot signs webhooks with it (secret)"),
    var("CRM_HUBSPOT_WEBHOOK_SECRET", "(client secret)", "overrides the key for HubSpot webhook signatures (secret)"),
    var("CRM_HUBSPOT_LEGACY_SIGNATURES", "false", "true: also accept HubSpot webhooks signed only with v1 or v2, which carry no timestamp, so a captured request can be replayed; false: the v3 signature is required (HubSpot sends it with every request)"),
    var("CRM_HUBSPOT_API_URL", "https://api.hubapi.com", "HubSpot API base URL (the sandbox or a proxy)"),
    var("CRM_HUBSPOT_AUTH_URL", "https://app.hubspot.com", "HubSpot authorize base URL"),
    var("CRM_ZOHO_CLIENT_ID", "(none)", "Zoho CRM client id"),
    var("CRM_ZOHO_CLIENT_SECRET", "(none)", "Zoho CRM client secret (secret)"),
    var("CRM_ZOHO_WEBHOOK_SECRET", "(none)", "kept from the earlier deployment guide, not needed: each Zoho notification channel gets its own random token, sealed with age (secret)"),
    var("CRM_ZOHO_ACCOUNTS_URL", "https://accounts.zoho.com", "Zoho accounts base URL where consent starts; each connection then uses its own data centre's accounts server and api_domain"),
    var("CRM_ZOHO_CONCURRENCY", "5", "Zoho requests in flight per connection (Zoho allows 5-25 by edition)"),
    var("CRM_ZOHO_CHANNEL_TTL_SECS", "86400", "lifetime asked for each Zoho notification channel (2-604800; Zoho allows a week at most); renewed when half is left"),
    var("ODOO_DEFAULT_TIMEOUT", "30", "seconds an Odoo call may take"),
    var("CRM_SYNC_PAGE", "200", "records per page when polling or backfilling (1-1000)"),
    var("CRM_SYNC_RPS", "5", "requests per second per CRM account (portal, org, database), shared by the workspaces connected to it"),
    var("CRM_HUBSPOT_SEARCH_RPS", "4", "HubSpot search requests a portal may take a second, on top of CRM_SYNC_RPS (HubSpot allows about 5; 0.1-10000)"),
    var("CRM_SYNC_BURST", "10", "requests a CRM account may take at once before CRM_SYNC_RPS paces it (its burst limit; 1-10000)"),
    var("CRM_POLL_INTERVAL_SECS", "300", "seconds between delta polls of each connection (the safety net under webhooks)"),
    var("CRM_POLL_LOOKBACK_SECS", "120", "how far before its cursor a poll looks again, for the providers' search lag"),
    var("CRM_LINK_SWEEP_EVERY", "12", "polls between two sweeps of every record's links (associations; 0: never)"),
    var("CRM_HUBSPOT_ARCHIVED_EVERY", "12", "polls between two listings of HubSpot's archived records, for deletions whose webhook was lost (1: every poll; each lists every record archived in 90 days)"),
    var("CRM_NATS_PREFIX", "(none)", "prefix of subjects and streams, for several installations on one NATS account"),
    var("CRM_STREAM_REPLICAS", "1", "replicas of each JetStream stream (1-5; 3 in a cluster)"),
    var("CRM_DEDUPE_WINDOW_SECS", "86400", "JetStream duplicate window in seconds (at least 900); a day covers HubSpot's retries"),
    var("CRM_WEBHOOK_MAX_BYTES", "33554432", "largest HubSpot webhook batch accepted (413 above; the default takes the largest HubSpot sends); other routes take at most 1 MiB of it"),
    var("CRM_BATCH_SIZE", "500", "events a projector commits together, at most"),
    var("CRM_BATCH_LINGER_MS", "5", "how long a projector catching up on a backlog waits for a batch to fill before committing (0-1000; 0: never waits)"),
    var("CRM_MAX_DELIVER", "10", "deliveries of a failing event before it is dead-lettered (2-1000)"),
    var("CRM_RETRY_BASE_MS", "30000", "ack wait, and first retry delay of a failing event, doubled each time up to CRM_RETRY_MAX_MS"),
    var("CRM_RETRY_MAX_MS", "300000", "longest retry delay of a failing event"),
    var("CRM_SHUTDOWN_TIMEOUT_SECS", "30", "how long a stopping process may finish in-flight work"),
    var("CRM_LOG_FORMAT", "text", "log format: text or json (levels with RUST_LOG)"),
];

/// A variable that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {name} {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: Secret<String>,
    pub nats_url: String,
    pub port: u16,
    pub bind: std::net::IpAddr,
    pub public_url: Option<String>,
    pub api_token: Option<Secret<String>>,
    pub encryption_key: Option<Secret<String>>,
    pub hubspot_client_id: Option<String>,
    pub hubspot_client_secret: Option<Secret<String>>,
    pub hubspot_webhook_secret: Option<Secret<String>>,
    pub hubspot_legacy_signatures: bool,
    pub hubspot_api_url: String,
    pub hubspot_auth_url: String,
    pub zoho_client_id: Option<String>,
    pub zoho_client_secret: Option<Secret<String>>,
    pub zoho_webhook_secret: Option<Secret<String>>,
    pub zoho_accounts_url: String,
    pub zoho_concurrency: usize,
    pub zoho_channel_ttl: Duration,
    pub odoo_timeout: Duration,
    pub sync_page: u32,
    pub sync_rps: f64,
    pub sync_burst: f64,
    pub hubspot_search_rps: f64,
    pub poll_interval: Duration,
    pub poll_lookback: Duration,
    pub link_sweep_every: u32,
    pub hubspot_archived_every: u32,
    pub nats_prefix: Option<String>,
    pub stream_replicas: usize,
    pub dedupe_window: Duration,
    pub webhook_max_bytes: usize,
    pub batch_size: usize,
    pub batch_linger: Duration,
    pub max_deliver: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
}

struct Reader<F> {
    lookup: F,
}

fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.default)
        .unwrap_or("")
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The value, or `None` when unset or blank.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn or_default(&self, name: &'static str) -> String {
        self.get(name)
            .unwrap_or_else(|| default_of(name).to_owned())
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        &self,
        name: &'static str,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        let raw = self.or_default(name);
        match raw.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => Err(ConfigError {
                name,
                problem: format!("must be a number from {min} to {max}, got {raw:?}"),
            }),
        }
    }

    fn url(&self, name: &'static str, schemes: &[&str]) -> Result<String, ConfigError> {
        let raw = self.or_default(name);
        check_url(name, &raw, schemes, false)?;
        Ok(raw.trim_end_matches('/').to_owned())
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        let raw = self.or_default(name);
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ConfigError {
                name,
                problem: format!("must be true or false, got {raw:?}"),
            }),
        }
    }

    fn secret(&self, name: &str) -> Option<Secret<String>> {
        self.get(name).map(Secret::new)
    }
}

fn check_url(
    name: &'static str,
    raw: &str,
    schemes: &[&str],
    secret: bool,
) -> Result<(), ConfigError> {
    let shown = if secret {
        "(value hidden)".to_owned()
    } else {
        format!("{raw:?}")
    };
    let problem = |why: &str| ConfigError {
        name,
        problem: format!(
            "must be a {} URL ({why}), got {shown}",
            schemes.join(" or ")
        ),
    };
    let url = url::Url::parse(raw).map_err(|e| problem(&e.to_string()))?;
    if !schemes.contains(&url.scheme()) {
        return Err(problem("wrong scheme"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(problem("no host"));
    }
    Ok(())
}

impl Settings {
    /// Each connection's allowance with its provider.
    pub fn rate_limits(&self) -> crmsync_adapters::RateLimits {
        crmsync_adapters::RateLimits {
            rps: self.sync_rps,
            burst: self.sync_burst,
            search_rps: self.hubspot_search_rps,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { lookup };
        let database_url = r.or_default("DATABASE_URL");
        check_url(
            "DATABASE_URL",
            &database_url,
            &["postgres", "postgresql"],
            true,
        )?;
        let nats_url = r.or_default("NATS_URL");
        for server in nats_url.split(',') {
            let server = server.trim();
            let with_scheme = if server.contains("://") {
                server.to_owned()
            } else {
                format!("nats://{server}")
            };
            check_url(
                "NATS_URL",
                &with_scheme,
                &["nats", "tls", "ws", "wss"],
                true,
            )?;
        }
        let public_url = match r.get("CRM_PUBLIC_URL") {
            Some(u) => {
                check_url("CRM_PUBLIC_URL", &u, &["http", "https"], false)?;
                Some(u.trim_end_matches('/').to_owned())
            }
            None => None,
        };
        let bind_raw = r.or_default("CRM_BIND");
        let bind = bind_raw.trim().parse().map_err(|_| ConfigError {
            name: "CRM_BIND",
            problem: format!(
                "must be an IP address such as 0.0.0.0 or 127.0.0.1, got {bind_raw:?}"
            ),
        })?;
        let encryption_key = r.secret("ENCRYPTION_KEY");
        if let Some(key) = &encryption_key {
            if let Err(e) = crmsync_adapters::Vault::parse(key.expose()) {
                return Err(ConfigError {
                    name: "ENCRYPTION_KEY",
                    problem: format!(
                        "must hold age identities, one per line (make one with `age-keygen`): {e}"
                    ),
                });
            }
        }
        let prefix = r.get("CRM_NATS_PREFIX");
        if let Some(p) = &prefix {
            Subjects::new(Some(p)).map_err(|_| ConfigError {
                name: "CRM_NATS_PREFIX",
                problem: format!(
                    "must be dot-separated tokens of letters, digits, '-' and '_', got {p:?}"
                ),
            })?;
        }
        let log_format = match r.or_default("CRM_LOG_FORMAT").trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError {
                    name: "CRM_LOG_FORMAT",
                    problem: format!("must be text or json, got {other:?}"),
                })
            }
        };
        let sync_rps: f64 = r.number("CRM_SYNC_RPS", 0.01, 10_000.0)?;
        Ok(Settings {
            database_url: Secret::new(database_url),
            nats_url,
            port: r.number("PORT", 0, u16::MAX)?,
            bind,
            public_url,
            api_token: r.secret("CRM_API_TOKEN"),
            encryption_key,
            hubspot_client_id: r.get("CRM_HUBSPOT_CLIENT_ID"),
            hubspot_client_secret: r.secret("CRM_HUBSPOT_CLIENT_SECRET"),
            hubspot_webhook_secret: r.secret("CRM_HUBSPOT_WEBHOOK_SECRET"),
            hubspot_legacy_signatures: r.flag("CRM_HUBSPOT_LEGACY_SIGNATURES")?,
            hubspot_api_url: r.url("CRM_HUBSPOT_API_URL", &["http", "https"])?,
            hubspot_auth_url: r.url("CRM_HUBSPOT_AUTH_URL", &["http", "https"])?,
            zoho_client_id: r.get("CRM_ZOHO_CLIENT_ID"),
            zoho_client_secret: r.secret("CRM_ZOHO_CLIENT_SECRET"),
            zoho_webhook_secret: r.secret("CRM_ZOHO_WEBHOOK_SECRET"),
            zoho_accounts_url: r.url("CRM_ZOHO_ACCOUNTS_URL", &["http", "https"])?,
            zoho_concurrency: r.number("CRM_ZOHO_CONCURRENCY", 1, 25)?,
            zoho_channel_ttl: Duration::from_secs(r.number(
                "CRM_ZOHO_CHANNEL_TTL_SECS",
                2,
                7 * 86_400,
            )?),
            odoo_timeout: Duration::from_secs(r.number("ODOO_DEFAULT_TIMEOUT", 1, 3600)?),
            sync_page: r.number("CRM_SYNC_PAGE", 1, 1000)?,
            sync_rps,
            sync_burst: r.number("CRM_SYNC_BURST", 1.0, 10_000.0)?,
            hubspot_search_rps: r.number("CRM_HUBSPOT_SEARCH_RPS", 0.1, 10_000.0)?,
            poll_interval: Duration::from_secs(r.number("CRM_POLL_INTERVAL_SECS", 1, 86_400)?),
            poll_lookback: Duration::from_secs(r.number("CRM_POLL_LOOKBACK_SECS", 0, 86_400)?),
            link_sweep_every: r.number("CRM_LINK_SWEEP_EVERY", 0, 100_000)?,
            hubspot_archived_every: r.number("CRM_HUBSPOT_ARCHIVED_EVERY", 1, 100_000)?,
            nats_prefix: prefix,
            stream_replicas: r.number("CRM_STREAM_REPLICAS", 1, 5)?,
            dedupe_window: Duration::from_secs(r.number(
                "CRM_DEDUPE_WINDOW_SECS",
                900,
                7 * 86_400,
            )?),
            webhook_max_bytes: r.number("CRM_WEBHOOK_MAX_BYTES", 1024, 64 << 20)?,
            batch_size: r.number("CRM_BATCH_SIZE", 1, 10_000)?,
            batch_linger: Duration::from_millis(r.number("CRM_BATCH_LINGER_MS", 0, 1000)?),
            max_deliver: r.number("CRM_MAX_DELIVER", 2, 1000)?,
            retry_base: Duration::from_millis(r.number("CRM_RETRY_BASE_MS", 10, 3_600_000)?),
            retry_max: Duration::from_millis(r.number("CRM_RETRY_MAX_MS", 10, 86_400_000)?),
            shutdown_timeout: Duration::from_secs(r.number(
                "CRM_SHUTDOWN_TIMEOUT_SECS",
                1,
                3600,
            )?),
            log_format,
        })
    }

    /// The key HubSpot webhooks are verified with.
    pub fn hubspot_webhook_key(&self) -> Option<Secret<String>> {
        self.hubspot_webhook_secret
            .clone()
            .or_else(|| self.hubspot_client_secret.clone())
    }

    /// The vault of `ENCRYPTION_KEY`, when set (validated at start-up).
    pub fn vault(&self) -> Option<crmsync_adapters::Vault> {
        self.encryption_key
            .as_ref()
            .and_then(|k| crmsync_adapters::Vault::parse(k.expose()).ok())
    }

    /// Zoho's OAuth app, when its client id and secret are set.
    pub fn zoho_app(&self) -> Option<crmsync_adapters::zoho::oauth::ZohoApp> {
        Some(crmsync_adapters::zoho::oauth::ZohoApp {
            client_id: self.zoho_client_id.clone()?,
            client_secret: self.zoho_client_secret.clone()?,
            accounts_url: self.zoho_accounts_url.clone(),
        })
    }

    /// HubSpot's OAuth app, when its client id and secret are set.
    pub fn hubspot_app(&self) -> Option<crmsync_adapters::hubspot::oauth::OAuthApp> {
        Some(crmsync_adapters::hubspot::oauth::OAuthApp {
            client_id: self.hubspot_client_id.clone()?,
            client_secret: self.hubspot_client_secret.clone()?,
            auth_url: self.hubspot_auth_url.clone(),
            api_url: self.hubspot_api_url.clone(),
            scopes: [
                "oauth",
                "crm.objects.contacts.read",
                "crm.objects.contacts.write",
                "crm.objects.companies.read",
                "crm.objects.deals.read",
            ]
            .map(str::to_owned)
            .to_vec(),
        })
    }

    /// How consumers retry and when they give up.
    pub fn delivery_policy(&self) -> crate::topology::DeliveryPolicy {
        crate::topology::DeliveryPolicy {
            max_deliver: self.max_deliver,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
        }
    }

    /// The variables' help, for `--help`.
    pub fn help_text() -> String {
        let mut out = String::from("Environment variables (read once at start-up):\n");
        for v in VARIABLES {
            out.push_str(&format!(
                "  {}\n      {} [default: {}]\n",
                v.name, v.help, v.default
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_run_locally() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.database_url.expose(),
            "postgres://postgres@127.0.0.1:5432/crmsync"
        );
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.port, 8080);
        assert_eq!(s.sync_page, 200);
        assert_eq!(s.sync_rps, 5.0);
        assert_eq!(s.odoo_timeout, Duration::from_secs(30));
        assert_eq!(s.hubspot_api_url, "https://api.hubapi.com");
        assert_eq!(s.dedupe_window, Duration::from_secs(86_400));
        assert!(s.hubspot_webhook_key().is_none());
    }

    #[test]
    fn malformed_values_name_the_variable_and_what_was_expected() {
        let cases = [
            ("PORT", "eighty", "must be a number from 0 to 65535"),
            ("CRM_SYNC_PAGE", "0", "must be a number from 1 to 1000"),
            ("CRM_SYNC_RPS", "-1", "must be a number"),
            ("NATS_URL", "http://x", "must be a nats"),
            (
                "DATABASE_URL",
                "mysql://u:hunter2@x/db",
                "must be a postgres",
            ),
            (
                "CRM_PUBLIC_URL",
                "crm.example.com",
                "must be a http or https URL",
            ),
            ("CRM_BIND", "everywhere", "must be an IP address"),
            ("CRM_LOG_FORMAT", "xml", "must be text or json"),
            ("CRM_NATS_PREFIX", "a.*", "must be dot-separated"),
            ("CRM_DEDUPE_WINDOW_SECS", "60", "from 900"),
            ("ENCRYPTION_KEY", "hunter2", "must hold age identities"),
        ];
        for (name, value, expected) in cases {
            let err = settings(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name);
            let line = err.to_string();
            assert!(line.contains(expected), "{line}");
            assert!(
                line.starts_with(&format!("configuration: {name} ")),
                "{line}"
            );
            assert!(!line.contains('\n'));
            assert!(!line.contains("hunter2"), "a secret was printed: {line}");
        }
    }

    #[test]
    fn secrets_never_print_in_debug_output() {
        let s = settings(&[
            ("CRM_HUBSPOT_CLIENT_SECRET", "s3cr3t-client"),
            ("CRM_API_TOKEN", "s3cr3t-token"),
            ("DATABASE_URL", "postgres://u:s3cr3t-pw@db/crm"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(s.hubspot_webhook_key().unwrap().expose(), "s3cr3t-client");
    }

    #[test]
    fn the_webhook_secret_overrides_the_client_secret() {
        let s = settings(&[
            ("CRM_HUBSPOT_CLIENT_SECRET", "client"),
            ("CRM_HUBSPOT_WEBHOOK_SECRET", "hook"),
        ])
        .unwrap();
        assert_eq!(s.hubspot_webhook_key().unwrap().expose(), "hook");
    }

    #[test]
    fn several_nats_servers_are_accepted() {
        let s = settings(&[("NATS_URL", "nats://a:4222,nats://b:4222, c:4222")]).unwrap();
        assert_eq!(s.nats_url.split(',').count(), 3);
    }

    #[test]
    fn help_lists_every_variable() {
        let help = Settings::help_text();
        for v in VARIABLES {
            assert!(help.contains(v.name));
        }
    }
}
