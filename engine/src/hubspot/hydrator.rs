//! What the hydrator reads for HubSpot: every record a created, updated, restored or
//! merged webhook event names, through batch read (see [`crate::hydrator`]).

use async_nats::jetstream::Message;

use crmsync_adapters::hubspot::snapshot::{api_type_of, properties_of, snapshot_event};
use crmsync_adapters::hubspot::webhook::WebhookEvent;
use crmsync_schema::{
    binding, envelope::data_bytes, Change, Provider, RawEvent, Subjects, WorkspaceId,
};

use super::HubSpot;
use crate::hydrator::{client_outcome, Outcome, Source, Wanted};

impl Source for HubSpot {
    const PROVIDER: Provider = Provider::HubSpot;

    fn wanted(&self, subjects: &Subjects, msg: &Message) -> Option<Wanted> {
        let subject = subjects.parse_raw(&msg.subject).ok()?;
        api_type_of(subject.object.as_str())?;
        let event = binding::from_message(msg.headers.as_ref(), &msg.payload).ok()?;
        let change = Change::of_type(crmsync_schema::cloudevents::AttributesReader::ty(&event))?;
        if !matches!(
            change,
            Change::Created | Change::Updated | Change::Restored | Change::Merged
        ) {
            return None;
        }
        let data: WebhookEvent = serde_json::from_slice(&data_bytes(&event)).ok()?;
        let id = data
            .new_object_id
            .clone()
            .or_else(|| data.record_id().cloned())?
            .0;
        Some(Wanted {
            account: subject.workspace.as_str().to_owned(),
            object: subject.object.as_str().to_owned(),
            id,
        })
    }

    async fn read(
        &self,
        portal: &str,
        object: &str,
        ids: Vec<String>,
    ) -> Result<Vec<RawEvent>, Outcome> {
        let Some(workspace) = self
            .workspace_of(portal)
            .await
            .map_err(|e| Outcome::Retry(e.to_string()))?
        else {
            return Err(Outcome::Skip("the portal has no active connection".into()));
        };
        if crate::pause::is_paused(
            self.pool(),
            &workspace,
            crmsync_schema::Provider::HubSpot,
            object,
        )
        .await
        {
            // The first poll after the start reads it: its cursor has not moved.
            return Err(Outcome::Skip("the sync is stopped".into()));
        }
        let client = self.client(&workspace).await.map_err(client_outcome)?;
        let api_type = api_type_of(object).expect("filtered in wanted()");
        let records = match client
            .batch_read(api_type, &ids, &properties_of(object))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.observe(&workspace, &e).await;
                return Err(Outcome::Retry(e.to_string()));
            }
        };
        let portal_id = WorkspaceId::parse(portal).map_err(|e| Outcome::Skip(e.to_string()))?;
        let object_type =
            crmsync_schema::ObjectType::parse(object).map_err(|e| Outcome::Skip(e.to_string()))?;
        Ok(records
            .iter()
            .filter_map(|r| snapshot_event(&portal_id, &object_type, r))
            .collect())
    }
}
