//! What the hydrator reads for Zoho: notifications carry ids only, so every record an
//! insert or update names is read back with `GET /{Module}?ids=` (100 a call). Deletes
//! need no read: the notification is the tombstone.

use async_nats::jetstream::Message;
use chrono::Utc;

use crmsync_adapters::error::ErrorKind;
use crmsync_adapters::zoho::mapping::fields_to_read;
use crmsync_adapters::zoho::module_of;
use crmsync_adapters::zoho::snapshot::snapshot_event;
use crmsync_schema::{binding, Change, ObjectType, Provider, RawEvent, Subjects, WorkspaceId};

use super::Zoho;
use crate::hydrator::{client_outcome, Outcome, Source, Wanted};

/// The objects whose records are read back.
const HYDRATED: [&str; 4] = ["contact", "company", "deal", "activity"];

impl Source for Zoho {
    const PROVIDER: Provider = Provider::Zoho;

    fn wanted(&self, subjects: &Subjects, msg: &Message) -> Option<Wanted> {
        let subject = subjects.parse_raw(&msg.subject).ok()?;
        if !HYDRATED.contains(&subject.object.as_str()) {
            return None;
        }
        let event = binding::from_message(msg.headers.as_ref(), &msg.payload).ok()?;
        let change = Change::of_type(crmsync_schema::cloudevents::AttributesReader::ty(&event))?;
        if !matches!(change, Change::Created | Change::Updated) {
            return None;
        }
        Some(Wanted {
            account: subject.workspace.as_str().to_owned(),
            object: subject.object.as_str().to_owned(),
            id: subject.id.as_str().to_owned(),
        })
    }

    async fn read(
        &self,
        org: &str,
        object: &str,
        ids: Vec<String>,
    ) -> Result<Vec<RawEvent>, Outcome> {
        let Some(workspace) = self
            .workspace_of(org)
            .await
            .map_err(|e| Outcome::Retry(e.to_string()))?
        else {
            return Err(Outcome::Skip("the org has no active connection".into()));
        };
        if crate::pause::is_paused(
            self.pool(),
            &workspace,
            crmsync_schema::Provider::Zoho,
            object,
        )
        .await
        {
            // The first poll after the start reads what changed meanwhile: a stopped
            // object's cursor does not move.
            return Err(Outcome::Skip("the sync is stopped".into()));
        }
        let client = self.client(&workspace).await.map_err(client_outcome)?;
        let module = module_of(object).expect("filtered in wanted()");
        let read_at = Utc::now();
        let records = match client.by_ids(module, &ids, fields_to_read(module)).await {
            Ok(r) => r,
            Err(e) => {
                self.observe(&workspace, &e).await;
                // Still refused after the client's retries: the org's credits are
                // spent, and a retry every few seconds would only spend more.
                return Err(match e.kind {
                    ErrorKind::RateLimited { .. } => Outcome::Later(e.to_string()),
                    _ => Outcome::Retry(e.to_string()),
                });
            }
        };
        let org_id = WorkspaceId::parse(org).map_err(|e| Outcome::Skip(e.to_string()))?;
        let object_type = ObjectType::parse(object).map_err(|e| Outcome::Skip(e.to_string()))?;
        Ok(records
            .iter()
            .filter_map(|r| snapshot_event(&org_id, &object_type, r, read_at))
            .collect())
    }
}
