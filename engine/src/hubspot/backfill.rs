//! Backfill: every record of a portal, paged through the list API and stored as
//! snapshot events, resuming after a crash from the last stored page (its `after`
//! cursor is kept in the `crm_cursors` bucket until the object is done). A finished
//! backfill moves the poll cursor up to when it began, so the first poll does not
//! read the portal again.
//!
//! A backfill of a large portal outlives its access token (HubSpot's last 30
//! minutes), and a token can be revoked early: when HubSpot refuses it, the stored
//! token is expired, refreshed, and the backfill resumes from its last stored page.

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};

use crmsync_adapters::hubspot::client::HubSpotClient;
use crmsync_adapters::hubspot::snapshot::{object_of, properties_of, snapshot_event};
use crmsync_ingest::connections::Refreshes;
use crmsync_ingest::publish::publish_all;
use crmsync_schema::{Subjects, WorkspaceId};

use super::{Connected, HubSpot};

pub fn resume_key(workspace: &str, portal: &str, api_type: &str) -> String {
    format!(
        "backfill.hubspot.{}.{}.{api_type}",
        hex::encode(workspace),
        hex::encode(portal)
    )
}

/// Where a backfill stands: the list's `after` cursor of the last stored page, and
/// when the backfill began (absent in resume points of earlier versions, which
/// stored the bare `after`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Resume {
    after: Option<String>,
    started_ms: Option<i64>,
}

impl Resume {
    fn parse(stored: &[u8]) -> Self {
        serde_json::from_slice(stored).unwrap_or_else(|_| Resume {
            after: Some(String::from_utf8_lossy(stored).into_owned()).filter(|a| !a.is_empty()),
            started_ms: None,
        })
    }
}

/// Backfills one object; returns the number of records stored. Progress goes to
/// `progress` (stderr for the CLI) one line a page.
pub async fn backfill(
    hubspot: &HubSpot,
    js: &jetstream::Context,
    subjects: &Subjects,
    cursors: &kv::Store,
    connection: &Connected,
    api_type: &str,
    progress: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<u64> {
    let workspace = connection.workspace.as_str();
    let mut stored = 0;
    let mut refreshes = Refreshes::default();
    loop {
        let client = hubspot.client(workspace).await?;
        let pages = pages(
            &client,
            js,
            subjects,
            cursors,
            connection,
            api_type,
            progress,
            &mut stored,
        );
        let Err(error) = pages.await else {
            return Ok(stored);
        };
        let refused = hubspot.observe(workspace, error.as_ref()).await;
        if !refreshes.again(refused) {
            return Err(error);
        }
        let _ = writeln!(
            progress,
            "{api_type}: HubSpot refused the access token; refreshing it and resuming"
        );
    }
}

/// The pages of one object from its resume point, with one client; `stored` counts
/// the records stored.
#[allow(clippy::too_many_arguments)]
async fn pages(
    client: &HubSpotClient,
    js: &jetstream::Context,
    subjects: &Subjects,
    cursors: &kv::Store,
    connection: &Connected,
    api_type: &str,
    progress: &mut (dyn std::io::Write + Send),
    stored: &mut u64,
) -> anyhow::Result<()> {
    let key = resume_key(&connection.workspace, &connection.portal, api_type);
    let mut resume = cursors
        .get(&key)
        .await
        .context("reading the backfill resume point")?
        .map(|v| Resume::parse(&v))
        .unwrap_or_else(|| Resume {
            after: None,
            started_ms: Some(chrono::Utc::now().timestamp_millis()),
        });
    if let Some(a) = &resume.after {
        let _ = writeln!(progress, "{api_type}: resuming after {a}");
    }
    let portal = WorkspaceId::parse(connection.portal.clone())?;
    let object = object_of(api_type).context("unknown object type")?;
    let properties = properties_of(object.as_str());
    let mut pages = 0u64;
    loop {
        let page = client
            .list(api_type, resume.after.as_deref(), &properties, false)
            .await?;
        let events: Vec<_> = page
            .results
            .iter()
            .filter_map(|r| snapshot_event(&portal, &object, r))
            .collect();
        publish_all(js, subjects, &events)
            .await
            .context("storing backfilled records")?;
        *stored += events.len() as u64;
        pages += 1;
        match page.after {
            Some(a) => {
                resume.after = Some(a);
                cursors
                    .put(&key, serde_json::to_vec(&resume)?.into())
                    .await
                    .context("saving the backfill resume point")?;
            }
            None => break,
        }
        let _ = writeln!(progress, "{api_type}: {stored} records ({pages} pages)");
    }
    // Every record was read after the backfill began: the poll need not read again
    // what was modified before.
    if let Some(started_ms) = resume.started_ms {
        super::poller::seed(cursors, connection, api_type, started_ms).await?;
    }
    cursors
        .delete(&key)
        .await
        .context("clearing the backfill resume point")?;
    let _ = writeln!(progress, "{api_type}: done, {stored} records");
    Ok(())
}
