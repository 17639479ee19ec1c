//! Start-up and the run loop: `build` connects, migrates and lays out the topology;
//! `run_until_stopped` serves and consumes until asked to stop, then drains.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::Metrics;
use crmsync_ingest::AppState;
use crmsync_projectors::{Projector, ProjectorConfig, Table};
use crmsync_schema::Provider;

use crate::config::Settings;
use crate::db;
use crate::lease::LEADER_TTL;
use crate::topology::Topology;

/// The largest body of any route but HubSpot's webhooks (whose limit is
/// `CRM_WEBHOOK_MAX_BYTES`), when that setting is larger.
const OTHER_BODIES_MAX: usize = 1 << 20;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API: provider webhooks, health and metrics.
    Api,
    /// Consumers: projectors (health and metrics over HTTP too).
    Worker,
    /// Both, in one process.
    All,
}

/// A started, not yet running, engine.
#[derive(Debug)]
pub struct Engine {
    settings: Settings,
    role: Role,
    pub state: Arc<AppState>,
    pub topology: Topology,
    listener: TcpListener,
    projectors: Vec<Projector>,
    hubspot: Option<Arc<crate::hubspot::HubSpot>>,
    zoho: Option<Arc<crate::zoho::Zoho>>,
    odoo: Option<Arc<crate::odoo::Odoo>>,
    probes: Arc<crate::health::Probes>,
}

/// Connects to NATS, whose URL may list several servers.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("NATS_URL holds an invalid server address")?;
    async_nats::ConnectOptions::new()
        .name("crmsync")
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(servers)
        .await
        .context("cannot reach NATS at NATS_URL")
}

impl Engine {
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.database_url).await?;
        db::migrate(&pool).await?;
        let nats = connect_nats(&settings.nats_url).await?;
        let js = jetstream::new(nats.clone());
        let topology = Topology::of(&settings)?;
        for note in topology
            .ensure(&js)
            .await
            .context("setting up JetStream streams")?
        {
            tracing::info!("{note}");
        }
        if role != Role::Worker
            && settings.hubspot_webhook_key().is_some()
            && settings.public_url.is_none()
        {
            tracing::warn!("CRM_PUBLIC_URL is not set: HubSpot v2/v3 signatures are checked against the URI rebuilt from Host and X-Forwarded-* headers; set it when a proxy sits in front");
        }
        let metrics = Arc::new(Metrics::new());
        let mut projectors = Vec::new();
        if role != Role::Api {
            for provider in Provider::ALL {
                projectors
                    .push(projector(&settings, &topology, &js, &pool, &metrics, provider).await?);
            }
        }
        let connectors = || {
            let hubspot = match (settings.hubspot_app(), settings.vault()) {
                (Some(app), Some(vault)) => Some(Arc::new(crate::hubspot::HubSpot::new(
                    pool.clone(),
                    Arc::new(vault),
                    app,
                    metrics.clone(),
                    settings.rate_limits(),
                ))),
                _ => None,
            };
            let zoho = match (settings.zoho_app(), settings.vault()) {
                (Some(app), Some(vault)) => Some(Arc::new(crate::zoho::Zoho::new(
                    pool.clone(),
                    Arc::new(vault),
                    app,
                    metrics.clone(),
                    settings.rate_limits(),
                    settings.zoho_concurrency,
                ))),
                _ => None,
            };
            (hubspot, zoho)
        };
        // Workers sync with their connectors. `/crm/health` probes with its own, so a
        // sync's rate-limit pause never reads as an unanswered probe.
        let (hubspot, zoho) = match role {
            Role::Api => (None, None),
            _ => connectors(),
        };
        let (hubspot_connector, zoho_connector) = connectors();
        if zoho.is_some() && settings.public_url.is_none() {
            tracing::warn!("CRM_PUBLIC_URL is not set: Zoho cannot be told where to send notifications, so Zoho connections are kept in step by polling alone");
        }
        let odoo = match settings.vault() {
            None => None,
            Some(vault) => {
                let cursors = js
                    .get_key_value(topology.cursor_bucket())
                    .await
                    .map_err(|e| anyhow::anyhow!("opening the cursor bucket: {e}"))?;
                Some(Arc::new(crate::odoo::Odoo::new(
                    pool.clone(),
                    Arc::new(vault),
                    metrics.clone(),
                    settings.rate_limits(),
                    settings.odoo_timeout,
                    settings.poll_lookback,
                    js.clone(),
                    topology.subjects.clone(),
                    cursors,
                )))
            }
        };
        let addr = SocketAddr::new(settings.bind, settings.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (PORT, CRM_BIND)"))?;
        let state = Arc::new(AppState {
            nats,
            js,
            pool,
            subjects: topology.subjects.clone(),
            metrics,
            hubspot_secret: settings.hubspot_webhook_key(),
            hubspot_signatures: if settings.hubspot_legacy_signatures {
                crmsync_adapters::hubspot::webhook::Accept::Legacy
            } else {
                crmsync_adapters::hubspot::webhook::Accept::V3
            },
            public_url: settings.public_url.clone(),
            max_body_bytes: settings.webhook_max_bytes.min(OTHER_BODIES_MAX),
            hubspot_max_body_bytes: settings.webhook_max_bytes,
            latest_migration: db::latest_migration(),
            api_token: settings.api_token.clone(),
            vault: settings.vault().map(Arc::new),
            hubspot_app: settings.hubspot_app(),
            zoho_app: settings.zoho_app(),
            dlq_stream: topology.dlq_stream(),
            odoo_timeout: settings.odoo_timeout,
            odoo_poll_interval: settings.poll_interval,
            odoo: odoo
                .clone()
                .map(|o| o as Arc<dyn crmsync_ingest::odoo::PollNow>),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
        });
        let probes = Arc::new(crate::health::Probes::new(
            state.clone(),
            hubspot_connector,
            zoho_connector,
            odoo.clone(),
            settings.rate_limits().rps,
        ));
        Ok(Self {
            settings,
            role,
            state,
            probes,
            topology,
            listener,
            projectors,
            hubspot,
            zoho,
            odoo,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// The HubSpot connector, when this process syncs HubSpot.
    pub fn hubspot(&self) -> Option<Arc<crate::hubspot::HubSpot>> {
        self.hubspot.clone()
    }

    /// The Zoho connector, when this process syncs Zoho.
    pub fn zoho(&self) -> Option<Arc<crate::zoho::Zoho>> {
        self.zoho.clone()
    }

    /// The Odoo connector, when this process syncs Odoo.
    pub fn odoo(&self) -> Option<Arc<crate::odoo::Odoo>> {
        self.odoo.clone()
    }

    /// Serves and consumes until `stop` is cancelled; then stops taking requests,
    /// finishes in-flight batches (bounded by CRM_SHUTDOWN_TIMEOUT_SECS) and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let router = match self.role {
            Role::Worker => crmsync_ingest::worker_router(self.state.clone()),
            _ => crate::routes::api_router(
                self.state.clone(),
                crate::history::HistoryState {
                    app: self.state.clone(),
                    stream: self.topology.events_stream(),
                    outbound: self.topology.outbound_stream(),
                    cursors: self.topology.cursor_bucket(),
                    stop: stop.clone(),
                },
                self.probes.clone(),
            ),
        };
        // HubSpot's webhook route reads up to CRM_WEBHOOK_MAX_BYTES itself; every
        // other body is small, and an unauthenticated one is read before it is
        // refused: 1 MiB at most.
        let router = router.layer(axum::extract::DefaultBodyLimit::max(
            self.settings.webhook_max_bytes.min(OTHER_BODIES_MAX),
        ));
        tracing::info!(addr = %self.local_addr(), role = ?self.role, "crmsync serving");
        let mut tasks = tokio::task::JoinSet::new();
        let http_stop = stop.clone();
        tasks.spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await
                .context("HTTP server failed")
        });
        tasks.spawn(crate::sync_log::prune(
            self.state.pool.clone(),
            stop.clone(),
        ));
        tasks.spawn(crate::status::sample_gauges(
            self.state.js.clone(),
            self.state.metrics.clone(),
            vec![
                self.topology.events_stream(),
                self.topology.outbound_stream(),
            ],
            self.topology.dlq_stream(),
            stop.clone(),
        ));
        for projector in self.projectors {
            let stop = stop.clone();
            tasks.spawn(async move {
                projector
                    .run(stop)
                    .await
                    .map_err(|e| anyhow::anyhow!("projector failed: {e}"))
            });
        }
        if let Some(hubspot) = self.hubspot.clone() {
            let js = self.state.js.clone();
            let topology = self.topology.clone();
            let cursors = js
                .get_key_value(topology.cursor_bucket())
                .await
                .map_err(|e| anyhow::anyhow!("opening the cursor bucket: {e}"))?;
            tasks.spawn(crate::hydrator::run(
                hubspot.clone(),
                js.clone(),
                topology.clone(),
                stop.clone(),
            ));
            let (settings, stop) = (self.settings.clone(), stop.clone());
            tasks.spawn(async move {
                let poll = |leading| {
                    crate::hubspot::poller::run(
                        hubspot.clone(),
                        js.clone(),
                        topology.subjects.clone(),
                        cursors.clone(),
                        crate::hubspot::poller::Cadence {
                            interval: settings.poll_interval,
                            lookback: settings.poll_lookback,
                            sweep_every: settings.link_sweep_every,
                            archived_every: settings.hubspot_archived_every,
                        },
                        leading,
                    )
                };
                crate::lease::lead(cursors.clone(), "hubspot-poller", LEADER_TTL, stop, poll).await
            });
        }
        if let Some(zoho) = self.zoho.clone() {
            let js = self.state.js.clone();
            let cursors = js
                .get_key_value(self.topology.cursor_bucket())
                .await
                .map_err(|e| anyhow::anyhow!("opening the cursor bucket: {e}"))?;
            tasks.spawn(crate::hydrator::run(
                zoho.clone(),
                js.clone(),
                self.topology.clone(),
                stop.clone(),
            ));
            if let Some(public_url) = self.settings.public_url.clone() {
                let (zoho, cursors, stop) = (zoho.clone(), cursors.clone(), stop.clone());
                let ttl = self.settings.zoho_channel_ttl;
                let cadence = crate::zoho::channels::cadence(self.settings.poll_interval, ttl);
                tasks.spawn(async move {
                    let keep = |leading| {
                        crate::zoho::channels::run(
                            zoho.clone(),
                            public_url.clone(),
                            ttl,
                            cadence,
                            leading,
                        )
                    };
                    crate::lease::lead(cursors.clone(), "zoho-channels", LEADER_TTL, stop, keep)
                        .await
                });
            }
            let (subjects, settings, stop) = (
                self.topology.subjects.clone(),
                self.settings.clone(),
                stop.clone(),
            );
            tasks.spawn(async move {
                let poll = |leading| {
                    crate::zoho::poller::run(
                        zoho.clone(),
                        js.clone(),
                        subjects.clone(),
                        cursors.clone(),
                        settings.poll_interval,
                        settings.poll_lookback,
                        leading,
                    )
                };
                crate::lease::lead(cursors.clone(), "zoho-poller", LEADER_TTL, stop, poll).await
            });
        }
        if self.role != Role::Api {
            let dispatcher = Arc::new(crate::outbound::Dispatcher {
                pool: self.state.pool.clone(),
                js: self.state.js.clone(),
                topology: self.topology.clone(),
                hubspot: self.hubspot.clone(),
                zoho: self.zoho.clone(),
                odoo: self.odoo.clone(),
                limits: self.settings.rate_limits(),
            });
            for provider in Provider::ALL {
                tasks.spawn(dispatcher.clone().run(provider, stop.clone()));
            }
            tasks.spawn(crate::outbound::links::run(
                self.state.pool.clone(),
                self.state.js.clone(),
                self.topology.clone(),
                stop.clone(),
            ));
        }
        if let (Some(odoo), true) = (self.odoo, self.role != Role::Api) {
            tasks.spawn(crate::odoo::scheduler::run(
                odoo,
                self.settings.poll_interval,
                stop.clone(),
            ));
        }
        let mut result = Ok(());
        tokio::select! {
            () = stop.cancelled() => {}
            Some(done) = tasks.join_next() => {
                // A task that ends before a stop was asked for has failed: stop the rest.
                result = done.context("task panicked").and_then(|r| r);
                if result.is_ok() && !stop.is_cancelled() {
                    result = Err(anyhow::anyhow!("a component stopped unexpectedly"));
                }
                stop.cancel();
            }
        }
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::error!(error = %format!("{e:#}"), "while stopping");
                }
            }
        };
        if tokio::time::timeout(self.settings.shutdown_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!("shutdown timeout reached; unfinished work will be redelivered");
        }
        tracing::info!("crmsync stopped");
        result
    }
}

async fn projector(
    settings: &Settings,
    topology: &Topology,
    js: &jetstream::Context,
    pool: &PgPool,
    metrics: &Arc<Metrics>,
    provider: Provider,
) -> anyhow::Result<Projector> {
    let name = Topology::projector_name(provider);
    // Created here so that a bad configuration stops start-up with a clear error.
    let (config, notes) = topology
        .ensure_projector_consumer(js, provider)
        .await
        .with_context(|| format!("creating consumer {name}"))?;
    for note in notes {
        tracing::info!("{note}");
    }
    let mut pc = ProjectorConfig::new(provider, Table::ALL, name, topology.events_stream());
    pc.batch = settings.batch_size;
    pc.linger = settings.batch_linger;
    pc.max_deliver = settings.max_deliver;
    pc.ack_wait = settings.retry_base;
    Ok(Projector::new(
        pc,
        config,
        js.clone(),
        pool.clone(),
        topology.subjects.clone(),
        metrics.clone(),
    ))
}

/// Cancels the returned token on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stop requested");
        t.cancel();
    });
    token
}
