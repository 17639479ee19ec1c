//! The workspaces' field mappings (`crm_field_mappings`), as projection applies them.
//!
//! Projectors, replay and history all land an event's fields with the adapter's
//! defaults and then with its workspace's mapping for that provider and object. A
//! projector's batch is written only at the revision it was mapped at (checked in
//! the statement, or read before its transaction), and mapped anew when the
//! revision moved, so a mapping written through the API applies to the next batch
//! in every worker; a replay applies it to history. (The comment on the revision
//! table in `migrations/0008_field_mappings.sql` says projectors read it once per
//! batch; a one-statement batch now checks it in the statement instead. Applied
//! migrations are checksummed, so that file keeps its words.)

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgConnection, PgExecutor};
use tokio::sync::RwLock;

use crmsync_adapters::DefaultLanding;
use crmsync_schema::mapping::{Compiled, Mapping};
use crmsync_schema::{Provider, WorkspaceId};

use crate::tables::{Normalised, Table};

/// The mappings' revision (`crm_field_mappings_revision`), bumped by every write.
pub type Revision = i64;

/// The mappings' revision now.
pub async fn revision(db: impl PgExecutor<'_>) -> sqlx::Result<Revision> {
    sqlx::query_scalar("SELECT revision FROM crm_field_mappings_revision")
        .fetch_one(db)
        .await
}

/// Every stored mapping, resolved against its provider's defaults.
#[derive(Debug, Default)]
pub struct MappingSet {
    compiled: HashMap<(String, Provider, String), Compiled>,
}

impl MappingSet {
    /// Reads every mapping. One that no longer parses (written by a newer build) is
    /// skipped with a warning: the defaults apply to it.
    pub async fn load(db: impl PgExecutor<'_>) -> sqlx::Result<Self> {
        let rows: Vec<(String, String, String, serde_json::Value)> =
            sqlx::query_as("SELECT workspace_id, provider, object, rules FROM crm_field_mappings")
                .fetch_all(db)
                .await?;
        let mut compiled = HashMap::new();
        for (workspace, provider, object, rules) in rows {
            let Ok(provider) = provider.parse::<Provider>() else {
                continue;
            };
            match serde_json::from_value::<Mapping>(serde_json::json!({ "rules": rules })) {
                Ok(mapping) => {
                    let landing = DefaultLanding {
                        provider,
                        object: &object,
                    };
                    let c = mapping.compile(&landing);
                    compiled.insert((workspace, provider, object), c);
                }
                Err(e) => {
                    tracing::warn!(%provider, %object, error = %e, "a stored field mapping does not parse; its defaults apply")
                }
            }
        }
        Ok(Self { compiled })
    }

    /// The mapping of a workspace's `provider` records in `table`, if it has one
    /// (record tables only: links carry no fields).
    pub fn get(
        &self,
        table: Table,
        workspace: &WorkspaceId,
        provider: Provider,
    ) -> Option<&Compiled> {
        if table == Table::Associations || self.compiled.is_empty() {
            return None;
        }
        let key = (
            workspace.as_str().to_owned(),
            provider,
            table.object().to_owned(),
        );
        self.compiled.get(&key)
    }

    /// Re-shapes the rows an event landed as in `table`.
    pub fn apply(
        &self,
        table: Table,
        workspace: &WorkspaceId,
        provider: Provider,
        normalised: &mut Normalised,
    ) {
        if let Some(compiled) = self.get(table, workspace, provider) {
            for row in &mut normalised.rows {
                row.fields = compiled.apply(&row.fields);
            }
        }
    }
}

/// The current mappings of a long-running projector.
#[derive(Debug, Default)]
pub struct Mappings {
    current: RwLock<(Option<Revision>, Arc<MappingSet>)>,
}

impl Mappings {
    /// The mappings as stored now: reloaded when their revision moved.
    pub async fn current(
        &self,
        db: &mut PgConnection,
    ) -> sqlx::Result<(Revision, Arc<MappingSet>)> {
        let revision = revision(&mut *db).await?;
        {
            let current = self.current.read().await;
            if current.0 == Some(revision) {
                return Ok((revision, current.1.clone()));
            }
        }
        let set = Arc::new(MappingSet::load(&mut *db).await?);
        *self.current.write().await = (Some(revision), set.clone());
        Ok((revision, set))
    }

    /// The mappings as last read, with their revision, without asking Postgres
    /// whether they are still current (for a write that checks the revision
    /// itself); read now if they never were.
    pub async fn last_read(
        &self,
        db: &mut PgConnection,
    ) -> sqlx::Result<(Revision, Arc<MappingSet>)> {
        {
            let current = self.current.read().await;
            if let Some(revision) = current.0 {
                return Ok((revision, current.1.clone()));
            }
        }
        self.current(db).await
    }
}
