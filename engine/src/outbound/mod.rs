//! The outbound dispatcher: one durable consumer per provider on `CRM_OUTBOUND`
//! pushes each call outcome to the CRM, exactly once across crashes.
//!
//! Before creating anything it looks the record up in the CRM by the command's
//! idempotency key (left in the record: HubSpot's call title, Zoho's call subject, a
//! marker in Odoo's message), so a repeat push, a redelivery after a crash between the
//! CRM's answer and the ack, or a restarted worker finds the record it made. The state
//! (`crm_call_pushes`) says queued, sent (with the CRM id), failed or dead-lettered;
//! the CRM id also goes out as a `crm.result` event. A retryable failure (the clients
//! already retried 429s and 5xx within the call) comes back after an exponential,
//! jittered delay; a failure no retry fixes, or the last of `CRM_MAX_DELIVER` attempts,
//! goes to `CRM_DLQ` with its reason.
//!
//! Workspaces share a dispatcher fairly: it holds a window of commands, takes them in
//! turn by workspace, and leaves a workspace's surplus with JetStream (a delayed
//! negative ack, paced at its connection's rate), so one workspace's backlog never
//! queues another's pushes behind it. Attempts are counted in Postgres, not by
//! JetStream's deliveries, as such a deferral is no attempt.

mod hubspot;
pub mod links;
mod odoo;
mod zoho;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, Message};
use cloudevents::{EventBuilder, EventBuilderV10};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crmsync_adapters::retry::RetryPolicy;
use crmsync_adapters::{ProviderError, RateLimits};
use crmsync_ingest::calls::{Command, Target};
use crmsync_ingest::publish::publish_one;
use crmsync_schema::{
    binding, cloudevents, envelope::data_bytes, ObjectType, Provider, RemoteId, WorkspaceId,
};

use crate::topology::Topology;

/// Pushes one dispatcher runs at once.
const PARALLEL: usize = 16;
/// Commands one dispatcher holds, running or waiting their turn.
const WINDOW: usize = 64;
/// Commands of one workspace held at once; more are deferred.
const PER_WORKSPACE: usize = 8;
/// Requests a push makes, about (a lookup and a create), to pace deferrals.
const REQUESTS_PER_PUSH: f64 = 2.0;
/// How long a CRM's search may lag its writes (HubSpot: seconds).
const SEARCH_LAG: Duration = Duration::from_secs(3);
/// The shortest deferral.
const MIN_DEFERRAL: Duration = Duration::from_millis(250);
/// The furthest a command is deferred at once.
const MAX_DEFERRAL: Duration = Duration::from_secs(600);
/// How soon a command of a stopped sync is looked at again, times its deliveries
/// (up to a minute).
const PAUSED_RECHECK: Duration = Duration::from_secs(2);

/// Why a push did not happen.
#[derive(Debug)]
pub enum PushError {
    /// Worth another attempt.
    Retry(Reason),
    /// No retry will help (an unknown contact, a refused record).
    Fail(Reason),
}

/// A failure's reason: the whole text, kept with the push and in the DLQ (behind the
/// bearer token), and a shorter one for logs without the provider's own message
/// (which may quote personal data).
#[derive(Debug, Clone)]
pub struct Reason {
    pub text: String,
    pub log: String,
    /// The provider's own kind of failure, when the failure was its answer: a 401
    /// expires the access token for a refresh before the retry; a 429 is no attempt.
    pub kind: Option<crmsync_adapters::ErrorKind>,
}

impl Reason {
    /// The CRM refused the access token.
    pub fn token_refused(&self) -> bool {
        self.kind == Some(crmsync_adapters::ErrorKind::Unauthorized)
    }

    /// The CRM refused the call for its rate: no fault of the push, and no attempt.
    /// Its `Retry-After`, when it said.
    pub fn throttled(&self) -> Option<Option<Duration>> {
        match self.kind {
            Some(crmsync_adapters::ErrorKind::RateLimited { retry_after }) => Some(retry_after),
            _ => None,
        }
    }
}

impl From<String> for Reason {
    /// A reason of our own words: fit for logs as it is.
    fn from(text: String) -> Self {
        Reason {
            log: text.clone(),
            text,
            kind: None,
        }
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Self {
        Reason::from(text.to_owned())
    }
}

impl From<ProviderError> for PushError {
    fn from(e: ProviderError) -> Self {
        let reason = Reason {
            log: provider_log(&e),
            text: e.to_string(),
            kind: Some(e.kind),
        };
        if e.kind.retryable() || e.kind == crmsync_adapters::ErrorKind::Unauthorized {
            PushError::Retry(reason)
        } else {
            PushError::Fail(reason)
        }
    }
}

impl From<anyhow::Error> for PushError {
    fn from(e: anyhow::Error) -> Self {
        // A provider's own message stays out of the log line, at any depth.
        let provider = e.chain().find_map(|c| c.downcast_ref::<ProviderError>());
        let log = match provider {
            Some(p) if !p.message.is_empty() => e.to_string().replace(&p.message, "…"),
            _ => e.to_string(),
        };
        PushError::Retry(Reason {
            text: format!("{e:#}"),
            log,
            kind: provider.map(|p| p.kind),
        })
    }
}

/// A provider error without the provider's message.
fn provider_log(e: &ProviderError) -> String {
    format!(
        "{} {} failed ({}{})",
        e.provider,
        e.operation,
        e.kind.label(),
        e.status.map(|s| format!(", HTTP {s}")).unwrap_or_default()
    )
}

/// Pushes commands for every provider whose connector this process has.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub topology: Topology,
    pub hubspot: Option<Arc<crate::hubspot::HubSpot>>,
    pub zoho: Option<Arc<crate::zoho::Zoho>>,
    pub odoo: Option<Arc<crate::odoo::Odoo>>,
    /// Each connection's allowance, to pace deferred commands.
    pub limits: RateLimits,
}

/// A push's row as its lease found it.
#[derive(sqlx::FromRow)]
struct Leased {
    state: String,
    crm_id: Option<String>,
    /// This one included.
    attempts: i32,
    /// The call's latest push (commands of earlier ones are stale).
    pushes: i32,
    reason: Option<String>,
    /// Seconds since the push was last tried (the last attempt's end, or its start
    /// when its end was never recorded); none when it never was.
    since_tried: Option<f64>,
    /// This holder of the lease.
    #[sqlx(skip)]
    owner: String,
}

/// A command waiting its turn.
struct Waiting {
    msg: Message,
    command: Command,
}

/// Whose turn it is: items held per workspace, taken round-robin.
struct Turns<T> {
    waiting: HashMap<String, VecDeque<T>>,
    /// Workspaces with items waiting, in turn order.
    ring: VecDeque<String>,
    running: HashMap<String, usize>,
    held: usize,
    /// Where each workspace's deferred items are paced up to.
    deferred_until: HashMap<String, tokio::time::Instant>,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        Self {
            waiting: HashMap::new(),
            ring: VecDeque::new(),
            running: HashMap::new(),
            held: 0,
            deferred_until: HashMap::new(),
        }
    }
}

impl<T> Turns<T> {
    fn held_by(&self, workspace: &str) -> usize {
        self.waiting.get(workspace).map_or(0, VecDeque::len)
            + self.running.get(workspace).copied().unwrap_or(0)
    }

    /// Holds `w` of `workspace`, or gives it back when the workspace holds its share
    /// already.
    fn hold(&mut self, workspace: &str, w: T) -> Option<T> {
        if self.held_by(workspace) >= PER_WORKSPACE {
            return Some(w);
        }
        let queue = self.waiting.entry(workspace.to_owned()).or_default();
        if queue.is_empty() {
            self.ring.push_back(workspace.to_owned());
        }
        queue.push_back(w);
        self.held += 1;
        None
    }

    /// The next workspace's oldest item.
    fn next(&mut self) -> Option<T> {
        let ws = self.ring.pop_front()?;
        let queue = self.waiting.get_mut(&ws)?;
        let w = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&ws);
        } else {
            self.ring.push_back(ws.clone());
        }
        *self.running.entry(ws).or_default() += 1;
        Some(w)
    }

    fn done(&mut self, workspace: &str) {
        self.held = self.held.saturating_sub(1);
        if let Some(n) = self.running.get_mut(workspace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(workspace);
            }
        }
    }

    /// How long to leave a surplus command of `workspace` with JetStream: after what
    /// it holds and what was deferred before, at one push per `interval`.
    fn deferral(&mut self, workspace: &str, interval: Duration) -> Duration {
        let now = tokio::time::Instant::now();
        let behind = interval * u32::try_from(self.held_by(workspace)).unwrap_or(u32::MAX);
        let from = self
            .deferred_until
            .get(workspace)
            .copied()
            .filter(|t| *t > now + behind)
            .unwrap_or(now + behind);
        let at = (from + interval).min(now + MAX_DEFERRAL);
        if self.deferred_until.len() > 10_000 {
            self.deferred_until.retain(|_, t| *t > now);
        }
        self.deferred_until.insert(workspace.to_owned(), at);
        // Never a hot loop of deliveries, whatever the rate.
        (at - now).max(MIN_DEFERRAL)
    }

    fn waiting(&self) -> impl Iterator<Item = &T> {
        self.waiting.values().flatten()
    }

    fn drain(&mut self) -> Vec<T> {
        self.ring.clear();
        self.waiting.drain().flat_map(|(_, q)| q).collect()
    }
}

/// The provider account of a workspace's connection.
pub async fn account_of(
    pool: &PgPool,
    workspace: &str,
    provider: Provider,
) -> Result<String, PushError> {
    let account: Option<Option<String>> = sqlx::query_scalar(
        "SELECT account_id FROM crm_connections
         WHERE workspace_id = $1 AND provider = $2 AND status = 'active'",
    )
    .bind(workspace)
    .bind(provider.as_str())
    .fetch_optional(pool)
    .await
    .map_err(|e| PushError::Retry(e.to_string().into()))?;
    account.flatten().ok_or_else(|| {
        PushError::Fail(format!("workspace {workspace} has no active {provider} connection").into())
    })
}

/// The CRM id of a contact: its `crm_id`, else the projected contact with its email or
/// phone (which re-points an `app_id` named beside them), else the live record its
/// `app_id` is linked to.
pub async fn resolve_contact(
    pool: &PgPool,
    provider: Provider,
    account: &str,
    command: &Command,
) -> Result<Option<String>, PushError> {
    let Some(target) = command.outcome.contact.as_ref() else {
        return Ok(None);
    };
    if let Some(id) = &target.crm_id {
        return Ok(Some(id.clone()));
    }
    let by_email_or_phone = target.email.is_some() || target.phone.is_some();
    if by_email_or_phone {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT remote_id FROM contacts
             WHERE workspace_id = $1 AND provider = $2 AND NOT deleted AND merged_into IS NULL
               AND (lower(email) = lower($3) OR phone = $4 OR mobile_phone = $4)
             ORDER BY remote_id LIMIT 1",
        )
        .bind(account)
        .bind(provider.as_str())
        .bind(target.email.as_deref())
        .bind(target.phone.as_deref())
        .fetch_optional(pool)
        .await
        .map_err(|e| PushError::Retry(e.to_string().into()))?;
        if found.is_some() {
            return Ok(found);
        }
    }
    if let Some(id) = linked(pool, "contacts", provider, account, command, target).await? {
        return Ok(Some(id));
    }
    Err(PushError::Fail(
        if by_email_or_phone {
            format!("no {provider} contact matches the call's email or phone")
        } else {
            format!("the contact's app_id is linked to no live {provider} contact")
        }
        .into(),
    ))
}

/// The CRM id of a deal: its `crm_id`, else the live record its `app_id` is linked to.
pub async fn resolve_deal(
    pool: &PgPool,
    provider: Provider,
    account: &str,
    command: &Command,
) -> Result<Option<String>, PushError> {
    let Some(target) = command.outcome.deal.as_ref() else {
        return Ok(None);
    };
    if let Some(id) = &target.crm_id {
        return Ok(Some(id.clone()));
    }
    match linked(pool, "deals", provider, account, command, target).await? {
        Some(id) => Ok(Some(id)),
        None => Err(PushError::Fail(
            format!("the deal's app_id is linked to no live {provider} deal").into(),
        )),
    }
}

/// The CRM record an app id is linked to in `account`, following merges to the
/// surviving record; none when unlinked or when the record was deleted. (A record the
/// projection has not seen counts as live: the link came from a push that reached it.)
async fn linked(
    pool: &PgPool,
    table: &str,
    provider: Provider,
    account: &str,
    command: &Command,
    target: &Target,
) -> Result<Option<String>, PushError> {
    let Some(app_id) = target.app_id.as_deref() else {
        return Ok(None);
    };
    let entity = crmsync_schema::ids::singular(table);
    // Merges chain (A into B, then B into C); a cycle or a long chain ends the walk.
    let found: Option<(String, bool)> = sqlx::query_as(&format!(
        "WITH RECURSIVE walk (id, deleted, merged_into, hops) AS (
             SELECT l.crm_id, coalesce(r.deleted, false), r.merged_into, 0
               FROM crm_entity_links l
               LEFT JOIN {table} r
                 ON r.workspace_id = $4 AND r.provider = l.provider AND r.remote_id = l.crm_id
              WHERE l.workspace_id = $1 AND l.entity_type = $2 AND l.app_id = $3
                AND l.provider = $5 AND l.account_id = $4
             UNION ALL
             SELECT w.merged_into, coalesce(r.deleted, false), r.merged_into, w.hops + 1
               FROM walk w
               LEFT JOIN {table} r
                 ON r.workspace_id = $4 AND r.provider = $5 AND r.remote_id = w.merged_into
              WHERE w.merged_into IS NOT NULL AND w.hops < 10
         )
         SELECT id, deleted FROM walk WHERE merged_into IS NULL LIMIT 1"
    ))
    .bind(&command.workspace)
    .bind(entity)
    .bind(app_id)
    .bind(account)
    .bind(provider.as_str())
    .fetch_optional(pool)
    .await
    .map_err(|e| PushError::Retry(e.to_string().into()))?;
    Ok(found.and_then(|(id, deleted)| (!deleted).then_some(id)))
}

/// A link a push teaches, as its `crm.result` event carries it.
#[derive(Debug, serde::Serialize)]
struct Learned {
    entity_type: &'static str,
    app_id: String,
    crm_id: String,
}

/// The entity links a push teaches: each of its contact and deal that the app named by
/// `app_id`, with the CRM record it resolved to. (Nothing is looked up for a push that
/// names no `app_id`.)
async fn learned_links(
    pool: &PgPool,
    provider: Provider,
    account: &str,
    command: &Command,
) -> anyhow::Result<Vec<Learned>> {
    let app_id = |target: &Option<Target>| target.as_ref().and_then(|t| t.app_id.clone());
    let mut links = Vec::new();
    if let Some(app_id) = app_id(&command.outcome.contact) {
        let resolved = resolve_contact(pool, provider, account, command).await;
        links.extend(learned("contact", app_id, resolved)?);
    }
    if let Some(app_id) = app_id(&command.outcome.deal) {
        let resolved = resolve_deal(pool, provider, account, command).await;
        links.extend(learned("deal", app_id, resolved)?);
    }
    Ok(links)
}

/// The link an app id resolved to, if it resolved; a failure no retry fixes teaches
/// nothing, one worth retrying is an error.
fn learned(
    entity_type: &'static str,
    app_id: String,
    resolved: Result<Option<String>, PushError>,
) -> anyhow::Result<Option<Learned>> {
    match resolved {
        Ok(Some(crm_id)) => Ok(Some(Learned {
            entity_type,
            app_id,
            crm_id,
        })),
        Ok(None) | Err(PushError::Fail(_)) => Ok(None),
        Err(PushError::Retry(r)) => anyhow::bail!("resolving the push's links: {}", r.log),
    }
}

/// The fields crmsync wrote for `command`: as the provider's mapping reads them back
/// (Zoho), else in canonical form (crmsync does not read HubSpot's or Odoo's activities
/// back yet). The app is their authority (`crmsync_schema::conflict`).
fn app_fields(command: &Command, crm_id: &str) -> BTreeMap<String, serde_json::Value> {
    if command.provider == Provider::Zoho {
        return zoho::app_fields(command, crm_id);
    }
    let o = &command.outcome;
    [
        ("subject", json!(title(command))),
        ("body", json!(body_text(command))),
        ("direction", json!(o.direction)),
        ("disposition", json!(o.disposition)),
        (
            "started_at",
            json!(o
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        ),
        ("duration_secs", json!(o.duration_secs)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A readable line for the CRM record.
pub fn title(command: &Command) -> String {
    let o = &command.outcome;
    let direction = if o.direction == "inbound" {
        "Inbound"
    } else {
        "Outbound"
    };
    format!("{direction} call: {}", o.disposition)
}

/// Summary and notes, as the record's body.
pub fn body_text(command: &Command) -> String {
    let o = &command.outcome;
    let mut parts: Vec<String> = [o.summary.clone(), o.notes.clone()]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect();
    if let Some(url) = &o.recording_url {
        parts.push(format!("Recording: {url}"));
    }
    parts.join("\n\n")
}

impl Dispatcher {
    /// Finds the command's record in the CRM by its key after an attempt that may
    /// have created it (`since_last`: how long ago that attempt ended), once the CRM's
    /// search has caught up with its writes; else creates it.
    async fn push(
        &self,
        command: &Command,
        since_last: Option<Duration>,
    ) -> Result<String, PushError> {
        if let Some(since) = since_last {
            // Retries come after SEARCH_LAG; a redelivery after a crash may come
            // sooner, and waits out the rest.
            tokio::time::sleep(SEARCH_LAG.saturating_sub(since)).await;
            if let Some(found) = self.find(command).await? {
                return Ok(found);
            }
        }
        self.create(command).await
    }

    /// After a 401: the workspace's stored access token is expired, so the retry
    /// refreshes it (Odoo's API keys are not refreshed).
    async fn token_refused(&self, command: &Command) {
        match command.provider {
            Provider::HubSpot => {
                if let Some(hs) = &self.hubspot {
                    hs.token_refused(&command.workspace).await;
                }
            }
            Provider::Zoho => {
                if let Some(z) = &self.zoho {
                    z.token_refused(&command.workspace).await;
                }
            }
            Provider::Odoo => {}
        }
    }

    async fn find(&self, command: &Command) -> Result<Option<String>, PushError> {
        match command.provider {
            Provider::HubSpot => match &self.hubspot {
                Some(hs) => hubspot::find(hs, command).await,
                None => Ok(None),
            },
            Provider::Zoho => match &self.zoho {
                Some(z) => zoho::find(z, command).await,
                None => Ok(None),
            },
            Provider::Odoo => match &self.odoo {
                Some(o) => odoo::find(o, command).await,
                None => Ok(None),
            },
        }
    }

    async fn create(&self, command: &Command) -> Result<String, PushError> {
        match command.provider {
            Provider::HubSpot => match &self.hubspot {
                Some(hs) => hubspot::push(hs, &self.pool, command).await,
                None => Err(PushError::Retry("this worker does not sync HubSpot".into())),
            },
            Provider::Zoho => match &self.zoho {
                Some(z) => zoho::push(z, &self.pool, command).await,
                None => Err(PushError::Retry("this worker does not sync Zoho".into())),
            },
            Provider::Odoo => match &self.odoo {
                Some(o) => odoo::push(o, &self.pool, command).await,
                None => Err(PushError::Retry("this worker does not sync Odoo".into())),
            },
        }
    }

    async fn set_state(
        &self,
        command: &Command,
        state: &str,
        crm_id: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE crm_call_pushes SET state = $4, crm_id = COALESCE($5, crm_id), reason = $6,
                    updated_at = now()
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3
               AND (state <> 'sent' OR $4 = 'sent')",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .bind(state)
        .bind(crm_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a sent push: the contacts and deals it linked to the app's ids (at once,
    /// before the push shows as sent, so the next push naming an app id alone finds
    /// them), its state when `mark_sent`, then the CRM's id as a `crm.result` event,
    /// which carries the links to everyone else.
    async fn record_sent(
        &self,
        command: &Command,
        crm_id: &str,
        mark_sent: bool,
    ) -> anyhow::Result<()> {
        // Any status: a connection disconnected since the push still names the
        // account the record went to. Links are ordered by when the app asked for the
        // push (Postgres's clock, the same on every redelivery), not by when the CRM
        // answered.
        let (account, requested_at): (Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
            sqlx::query_as(
                "SELECT (SELECT account_id FROM crm_connections
                          WHERE workspace_id = $1 AND provider = $2),
                        (SELECT created_at FROM crm_call_pushes
                          WHERE workspace_id = $1 AND provider = $2 AND call_id = $3)",
            )
            .bind(&command.workspace)
            .bind(command.provider.as_str())
            .bind(&command.call_id)
            .fetch_one(&self.pool)
            .await?;
        let requested_at = requested_at.unwrap_or_else(chrono::Utc::now);
        let links = match &account {
            Some(account) => learned_links(&self.pool, command.provider, account, command).await?,
            None => Vec::new(),
        };
        for link in &links {
            links::EntityLink {
                workspace: &command.workspace,
                entity_type: link.entity_type,
                app_id: &link.app_id,
                provider: command.provider.as_str(),
                crm_id: &link.crm_id,
                account: account.as_deref(),
                at: requested_at,
            }
            .record(&self.pool)
            .await?;
        }
        if mark_sent {
            self.set_state(command, "sent", Some(crm_id), None).await?;
        }
        let ws = WorkspaceId::parse(command.workspace.clone())?;
        let call = RemoteId::parse(command.call_id.clone())?;
        let mut event = EventBuilderV10::new()
            .id(format!("result-{}-{crm_id}", command.key))
            .source(format!(
                "/crmsync/{}/{}",
                command.provider,
                crmsync_schema::subject::escape_token(ws.as_str())
            ))
            .ty("crmsync.activity.pushed.v1")
            .subject(format!(
                "activity/{}",
                crmsync_schema::subject::escape_token(&command.call_id)
            ))
            .time(chrono::Utc::now())
            .build()?;
        let data = json!({"call_id": command.call_id, "workspace": command.workspace,
                          "provider": command.provider, "crm_id": crm_id, "key": command.key,
                          "account": account, "fields": app_fields(command, crm_id),
                          "links": links, "requested_at": requested_at});
        event.set_data("application/json", serde_json::to_vec(&data)?);
        publish_one(
            &self.js,
            self.topology.subjects.result(
                command.provider,
                &ws,
                &ObjectType::parse("activity")?,
                &call,
            ),
            event,
            &format!("result:{}:{crm_id}", command.key),
        )
        .await?;
        Ok(())
    }

    async fn dead_letter(&self, msg: &Message, consumer: &str, reason: &str) {
        let subject = self.topology.subjects.dlq(consumer);
        if let Err(e) = crmsync_projectors::dlq::dead_letter(&self.js, subject, msg, reason).await {
            tracing::error!(error = %e, "dead-lettering a push failed; it will be redelivered");
            return;
        }
        let _ = msg.ack_with(AckKind::Term).await;
    }

    /// The delay before attempt `attempt + 1`: doubling from `CRM_RETRY_BASE_MS` up to
    /// `CRM_RETRY_MAX_MS`, with jitter.
    fn retry_delay(&self, attempt: usize) -> Duration {
        let policy = self.topology.policy;
        RetryPolicy {
            min_delay: policy.retry_base,
            max_delay: policy.retry_max,
            max_attempts: attempt,
        }
        .delay(attempt)
    }

    async fn handle(&self, msg: Message, command: Command, consumer: &str) {
        // One worker at a time per (call, provider), across processes: a lease on
        // the push's row, renewed while it works, gone with a crashed worker.
        let owner = uuid::Uuid::new_v4().to_string();
        match self.lease(&command, &owner).await {
            Ok(Some(mut leased)) => {
                leased.owner.clone_from(&owner);
                self.handle_leased(&msg, &command, consumer, &leased).await;
                let _ = self.release(&command, &owner).await;
            }
            Ok(None) => match self.exists(&command).await {
                // Another worker has it now: back when its lease has surely ended.
                Ok(true) => {
                    let _ = msg
                        .ack_with(AckKind::Nak(Some(self.topology.policy.retry_base)))
                        .await;
                }
                Ok(false) => {
                    self.dead_letter(&msg, consumer, "no push record for this command")
                        .await;
                }
                Err(e) => tracing::warn!(error = %e, "push state unreadable; retrying later"),
            },
            Err(e) => tracing::warn!(error = %e, "push state unreadable; retrying later"),
        }
    }

    /// Takes the push's lease for `owner`, counting an attempt (and marking its start)
    /// when it is queued and `command` is its latest push; the row as it was found.
    async fn lease(&self, command: &Command, owner: &str) -> Result<Option<Leased>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE crm_call_pushes p SET lease_until = now() + interval '30 seconds',
                    lease_owner = $4::uuid,
                    attempts = p.attempts + CASE WHEN p.state = 'queued'
                        AND ($5::int IS NULL OR p.pushes <= $5) THEN 1 ELSE 0 END,
                    updated_at = CASE WHEN p.state = 'queued'
                        AND ($5::int IS NULL OR p.pushes <= $5) THEN now() ELSE p.updated_at END,
                    tried_at = CASE WHEN p.state = 'queued'
                        AND ($5::int IS NULL OR p.pushes <= $5) THEN now() ELSE p.tried_at END
             -- Whether this is an attempt is decided on the row as locked (a new push
             -- may commit meanwhile); the snapshot only says when it was last tried.
             FROM (SELECT tried_at AS before FROM crm_call_pushes
                   WHERE workspace_id = $1 AND call_id = $2 AND provider = $3) o
             WHERE p.workspace_id = $1 AND p.call_id = $2 AND p.provider = $3
               AND (p.lease_until IS NULL OR p.lease_until < now())
             RETURNING p.state, p.crm_id, p.attempts, p.pushes, p.reason,
                       extract(epoch FROM now() - o.before)::float8 AS since_tried",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .bind(owner)
        .bind(command.push)
        .fetch_optional(&self.pool)
        .await
    }

    /// Whether the command has its push row at all.
    async fn exists(&self, command: &Command) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM crm_call_pushes
                            WHERE workspace_id = $1 AND call_id = $2 AND provider = $3)",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .fetch_one(&self.pool)
        .await
    }

    /// Extends `owner`'s lease; bounded, so a busy pool never holds up the progress
    /// acks.
    async fn renew(&self, command: &Command, owner: &str) {
        let renew = sqlx::query(
            "UPDATE crm_call_pushes SET lease_until = now() + interval '30 seconds'
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3
               AND lease_owner = $4::uuid",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .bind(owner)
        .execute(&self.pool);
        let _ = tokio::time::timeout(self.beat_every(), renew).await;
    }

    async fn release(&self, command: &Command, owner: &str) -> Result<(), sqlx::Error> {
        // An attempt that leaves the push queued is stamped at its end: the next one
        // waits out the CRM's search lag from then (a create may have finished long
        // after the attempt began, and its state write may have failed).
        sqlx::query(
            "UPDATE crm_call_pushes SET lease_until = NULL, lease_owner = NULL,
                    updated_at = CASE WHEN state = 'queued' THEN now() ELSE updated_at END,
                    tried_at = CASE WHEN state = 'queued' AND tried_at IS NOT NULL
                                    THEN now() ELSE tried_at END
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3
               AND lease_owner = $4::uuid",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Progress acks well inside the ack wait (JetStream's BackOff[0]).
    fn beat_every(&self) -> Duration {
        (self.topology.policy.retry_base / 3)
            .clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    async fn handle_leased(
        &self,
        msg: &Message,
        command: &Command,
        consumer: &str,
        leased: &Leased,
    ) {
        let Leased {
            state,
            crm_id,
            attempts,
            pushes,
            reason,
            since_tried,
            owner,
        } = leased;
        let attempts = *attempts;
        if state == "sent" {
            // Sent before: its result event may not have gone out (a crash, NATS
            // away); sent again, JetStream drops the copy.
            let recorded = match &crm_id {
                Some(id) => self.record_sent(command, id, false).await,
                None => Ok(()),
            };
            match recorded {
                Ok(()) => {
                    let _ = msg.ack().await;
                }
                Err(e) => tracing::warn!(error = %e, "a sent push's result is not recorded yet"),
            }
            return;
        }
        if command.push.is_some_and(|p| p < *pushes) {
            // The call was pushed again since: the newer command carries its outcome.
            // (A sent push is the exception, above: whichever command comes back
            // finishes recording it, since a new push of a sent call queues none.)
            tracing::debug!(provider = %command.provider, "a stale push command dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        if state == "failed" || state == "dead_lettered" {
            // Settled already, but its dead letter may not have been written (NATS
            // away then): written again (the same id, so JetStream keeps one), then
            // the command is done.
            let reason = reason.as_deref().unwrap_or("failed");
            self.dead_letter(msg, consumer, reason).await;
            return;
        }
        // Keep the message ours while the CRM is slow.
        let pushed = {
            let since_tried = since_tried.and_then(|s| Duration::try_from_secs_f64(s).ok());
            let push = self.push(command, since_tried);
            tokio::pin!(push);
            let mut beat = tokio::time::interval(self.beat_every());
            beat.tick().await;
            loop {
                tokio::select! {
                    r = &mut push => break r,
                    _ = beat.tick() => {
                        let _ = msg.ack_with(AckKind::Progress).await;
                        self.renew(command, owner).await;
                    }
                }
            }
        };
        let provider = command.provider;
        match pushed {
            Ok(crm_id) => match self.record_sent(command, &crm_id, true).await {
                Ok(()) => {
                    let _ = msg.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pushed, but not yet recorded; the redelivery will find the record");
                }
            },
            Err(PushError::Retry(reason)) => {
                // Not before the CRM's search shows what this attempt may have made.
                let delay = self.retry_delay(usize::try_from(attempts).unwrap_or(1));
                let (state, after) = match reason.throttled() {
                    // The CRM's rate, not the push, failed (a daily allowance spent,
                    // another integration's burst): no attempt, however long it lasts.
                    // Its delay grows with the command's deliveries, as its attempts do not.
                    Some(retry_after) => {
                        let deliveries = msg.info().map_or(1, |i| i.delivered.max(1));
                        let backoff = self.retry_delay(usize::try_from(deliveries).unwrap_or(1));
                        ("throttled", retry_after.unwrap_or(backoff))
                    }
                    None if i64::from(attempts) < self.topology.policy.max_deliver => {
                        ("queued", delay)
                    }
                    None => ("dead_lettered", Duration::ZERO),
                };
                if reason.token_refused() {
                    self.token_refused(command).await;
                }
                if !self.settle(command, state, &reason.text).await {
                    let _ = msg.ack_with(AckKind::Term).await;
                } else if state == "dead_lettered" {
                    tracing::warn!(%provider, attempts, reason = reason.log, "push dead-lettered after its last attempt");
                    self.dead_letter(msg, consumer, &reason.text).await;
                } else {
                    let after = after.clamp(SEARCH_LAG, MAX_DEFERRAL);
                    tracing::info!(%provider, attempts, ?after, reason = reason.log, "push failed; trying again later");
                    let _ = msg.ack_with(AckKind::Nak(Some(after))).await;
                }
            }
            Err(PushError::Fail(reason)) => {
                if self.settle(command, "failed", &reason.text).await {
                    tracing::warn!(%provider, reason = reason.log, "push failed for good");
                    self.dead_letter(msg, consumer, &reason.text).await;
                } else {
                    let _ = msg.ack_with(AckKind::Term).await;
                }
            }
        }
    }

    /// Records an attempt that did not send: `queued` for another, `throttled` (queued,
    /// the attempt not counted), `failed` or `dead_lettered`. False when the call was
    /// pushed again meanwhile: the newer command carries on, and this one is done.
    async fn settle(&self, command: &Command, state: &str, reason: &str) -> bool {
        let written = sqlx::query(
            "UPDATE crm_call_pushes SET state = CASE WHEN $4 = 'throttled' THEN 'queued' ELSE $4 END,
                    reason = $5, updated_at = now(),
                    attempts = attempts - CASE WHEN $4 = 'throttled' THEN 1 ELSE 0 END
             WHERE workspace_id = $1 AND call_id = $2 AND provider = $3
               AND state <> 'sent' AND ($6::int IS NULL OR pushes = $6)",
        )
        .bind(&command.workspace)
        .bind(&command.call_id)
        .bind(command.provider.as_str())
        .bind(state)
        .bind(reason)
        .bind(command.push)
        .execute(&self.pool)
        .await;
        match written {
            Ok(done) => done.rows_affected() > 0,
            Err(e) => {
                // Unrecorded, the attempt is still this command's to settle.
                tracing::warn!(error = %e, "a push's state could not be written");
                true
            }
        }
    }

    /// Takes a command off the stream: held for its turn, deferred when its workspace
    /// holds its share, dead-lettered when unreadable.
    async fn arrive(&self, turns: &mut Turns<Waiting>, msg: Message, consumer: &str) {
        let command: Command = match binding::from_message(msg.headers.as_ref(), &msg.payload)
            .map_err(|e| e.to_string())
            .and_then(|e| serde_json::from_slice(&data_bytes(&e)).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(reason) => {
                self.dead_letter(&msg, consumer, &format!("unreadable command: {reason}"))
                    .await;
                return;
            }
        };
        if crate::pause::is_paused(&self.pool, &command.workspace, command.provider, "activity")
            .await
        {
            // Stopped: the command waits with JetStream (no MaxDeliver here), looked at
            // less often the longer it waits.
            let times = msg.info().map_or(1, |i| i.delivered.max(1)) as u32;
            let wait = (PAUSED_RECHECK * times).min(Duration::from_secs(60));
            let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
            return;
        }
        let workspace = command.workspace.clone();
        if let Some(w) = turns.hold(&workspace, Waiting { msg, command }) {
            let interval = Duration::from_secs_f64(REQUESTS_PER_PUSH / self.limits.rps.max(0.001));
            let delay = turns.deferral(&w.command.workspace, interval);
            let _ = w.msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }

    /// Consumes `provider`'s commands until stopped.
    pub async fn run(
        self: Arc<Self>,
        provider: Provider,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let config = self.topology.outbound_consumer(provider);
        let name = config.durable_name.clone().unwrap_or_default();
        // A stream that is briefly missing (being recreated) is waited for, not fatal.
        let consumer: jetstream::consumer::PullConsumer = loop {
            match self
                .js
                .create_consumer_on_stream(config.clone(), self.topology.outbound_stream())
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, consumer = %name, "the dispatcher waits for its consumer");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        let mut messages = consumer
            .stream()
            // Few pulled ahead: a message in the client's buffer gets no progress
            // acks (if its ack wait passes, the lease keeps a second worker off).
            .max_messages_per_batch(PARALLEL)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("opening consumer {name}: {e}"))
            .context("outbound")?;
        tracing::info!(%provider, "outbound dispatcher started");
        let mut turns: Turns<Waiting> = Turns::default();
        let mut running = tokio::task::JoinSet::new();
        let mut workspace_of = HashMap::new();
        let mut beat = tokio::time::interval(self.beat_every());
        loop {
            while running.len() < PARALLEL {
                let Some(w) = turns.next() else { break };
                let this = self.clone();
                let name = name.clone();
                let workspace = w.command.workspace.clone();
                let task = running.spawn(async move { this.handle(w.msg, w.command, &name).await });
                workspace_of.insert(task.id(), workspace);
            }
            let room = turns.held < WINDOW;
            tokio::select! {
                () = stop.cancelled() => break,
                Some(done) = running.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            tracing::error!(error = %e, "a push task failed; its command is redelivered");
                            e.id()
                        }
                    };
                    if let Some(ws) = workspace_of.remove(&id) {
                        turns.done(&ws);
                    }
                }
                next = messages.next(), if room => match next {
                    Some(Ok(msg)) => self.arrive(&mut turns, msg, &name).await,
                    Some(Err(e)) => tracing::debug!(error = %e, "outbound consumer hiccup"),
                    None => break,
                },
                _ = beat.tick() => {
                    for w in turns.waiting() {
                        let _ = w.msg.ack_with(AckKind::Progress).await;
                    }
                }
            }
        }
        // Commands waiting their turn go back at once, for another worker; pushes
        // under way finish (bounded by the shutdown timeout).
        for w in turns.drain() {
            let _ = w.msg.ack_with(AckKind::Nak(None)).await;
        }
        while running.join_next().await.is_some() {}
        tracing::info!(%provider, "outbound dispatcher stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_messages_stay_out_of_log_lines() {
        let refused = ProviderError {
            kind: crmsync_adapters::ErrorKind::Rejected,
            provider: "zoho",
            operation: "create",
            status: Some(400),
            message: "ada@example.com is a duplicate".into(),
        };
        for e in [
            PushError::from(refused.clone()),
            PushError::from(anyhow::Error::new(refused.clone())),
            PushError::from(anyhow::Error::new(refused).context("pushing the call")),
        ] {
            let (PushError::Retry(r) | PushError::Fail(r)) = e;
            assert!(r.text.contains("ada@example.com"), "{}", r.text);
            assert!(!r.log.contains("ada@example.com"), "{}", r.log);
        }
    }

    #[test]
    fn workspaces_take_turns_and_one_holds_no_more_than_its_share() {
        let mut turns = Turns::default();
        // A backlog of one workspace, then two commands of another.
        let mut deferred = Vec::new();
        for n in 0..20 {
            if let Some(n) = turns.hold("big", n) {
                deferred.push(n);
            }
        }
        assert_eq!(deferred, (PER_WORKSPACE..20).collect::<Vec<_>>());
        assert_eq!(turns.hold("small", 100), None);
        assert_eq!(turns.hold("small", 101), None);
        let order: Vec<_> = std::iter::from_fn(|| turns.next()).take(5).collect();
        assert_eq!(order, [0, 100, 1, 101, 2]);
        // Running counts towards the share until done.
        assert_eq!(turns.hold("big", 20), Some(20));
        turns.done("big");
        assert_eq!(turns.hold("big", 20), None);
        assert_eq!(turns.held, PER_WORKSPACE + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn deferrals_are_paced_behind_what_the_workspace_holds() {
        let mut turns = Turns::default();
        for n in 0..PER_WORKSPACE {
            assert_eq!(turns.hold("big", n), None);
        }
        let every = Duration::from_millis(400);
        let held = every * PER_WORKSPACE as u32;
        let delays: Vec<_> = (0..3).map(|_| turns.deferral("big", every)).collect();
        assert_eq!(delays, [held + every, held + every * 2, held + every * 3]);
        // Another workspace's pace is its own.
        assert_eq!(turns.deferral("small", every), every);
        // Never beyond the longest deferral.
        for _ in 0..10_000 {
            assert!(turns.deferral("big", every) <= MAX_DEFERRAL);
        }
    }
}
