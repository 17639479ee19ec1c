//! Backfill: every record of an org's module, read oldest change first and stored as
//! snapshot events. The resume point is the newest modification stored so far (kept
//! in the `crm_cursors` bucket until the module is done): a crashed backfill starts
//! again from there rather than from the beginning. A finished backfill moves the
//! poll cursor up to it, so the first poll does not read the module again.
//!
//! A backfill of a large org outlives its access token (Zoho's last an hour), and a
//! token can be revoked early: when Zoho refuses it, the stored token is expired,
//! refreshed, and the backfill resumes from its last stored page.

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use chrono::DateTime;

use crmsync_adapters::zoho::client::ZohoClient;
use crmsync_schema::{ObjectType, Subjects, WorkspaceId};

use super::poller::{scan, store_records};
use super::{Connected, Zoho};
use crmsync_ingest::connections::Refreshes;

pub fn resume_key(workspace: &str, org: &str, module: &str) -> String {
    format!(
        "backfill.zoho.{}.{}.{module}",
        hex::encode(workspace),
        hex::encode(org)
    )
}

/// Backfills one module; returns the number of records stored. Progress goes to
/// `progress` (stderr for the CLI), one line a page.
#[allow(clippy::too_many_arguments)]
pub async fn backfill(
    zoho: &Zoho,
    js: &jetstream::Context,
    subjects: &Subjects,
    cursors: &kv::Store,
    connection: &Connected,
    module: &str,
    object: &str,
    progress: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<u64> {
    let workspace = connection.workspace.as_str();
    let mut stored = 0;
    let mut refreshes = Refreshes::default();
    loop {
        let client = zoho.client(workspace).await?;
        let pages = pages(
            &client,
            js,
            subjects,
            cursors,
            connection,
            (module, object),
            progress,
            &mut stored,
        );
        let Err(error) = pages.await else {
            return Ok(stored);
        };
        let refused = zoho.observe(workspace, error.as_ref()).await;
        if !refreshes.again(refused) {
            return Err(error);
        }
        let _ = writeln!(
            progress,
            "{module}: Zoho refused the access token; refreshing it and resuming"
        );
    }
}

/// The pages of one module from its resume point, with one client; `stored` counts
/// the records stored.
#[allow(clippy::too_many_arguments)]
async fn pages(
    client: &ZohoClient,
    js: &jetstream::Context,
    subjects: &Subjects,
    cursors: &kv::Store,
    connection: &Connected,
    (module, object): (&str, &str),
    progress: &mut (dyn std::io::Write + Send),
    stored: &mut u64,
) -> anyhow::Result<()> {
    let key = resume_key(&connection.workspace, &connection.org, module);
    let resume: Option<i64> = cursors
        .get(&key)
        .await
        .context("reading the backfill resume point")?
        .and_then(|v| String::from_utf8_lossy(&v).parse().ok());
    // A second early: Zoho's times are to the second, and copies are deduplicated.
    let since = resume.and_then(|ms| DateTime::from_timestamp_millis(ms - 1000));
    if let Some(s) = since {
        let _ = writeln!(progress, "{module}: resuming from changes after {s}");
    }
    let org = WorkspaceId::parse(connection.org.clone())?;
    let object = ObjectType::parse(object)?;
    let mut read = 0u64;
    let mut pages = 0u64;
    let scanned = scan(client, module, since, |page, at| {
        let (org, object, key) = (&org, &object, &key);
        let count = page.len() as u64;
        read += count;
        *stored += count;
        pages += 1;
        let line = format!("{module}: {stored} records ({pages} pages)");
        let _ = writeln!(progress, "{line}");
        async move {
            if let Some(newest) = store_records(js, subjects, org, object, &page, at).await? {
                cursors
                    .put(key, newest.to_string().into_bytes().into())
                    .await
                    .context("saving the backfill resume point")?;
            }
            Ok(())
        }
    })
    .await?;
    debug_assert_eq!(scanned.records as u64, read);
    if let Some(newest) = scanned.newest_ms.or(resume) {
        super::poller::seed(cursors, connection, module, newest).await?;
    }
    cursors
        .delete(&key)
        .await
        .context("clearing the backfill resume point")?;
    let _ = writeln!(progress, "{module}: done, {stored} records");
    Ok(())
}
