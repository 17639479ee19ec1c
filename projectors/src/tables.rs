//! The record tables (contacts, companies, deals): normalisation by provider and
//! object, and the batched upsert shared by all of them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use crmsync_adapters::{hubspot, odoo, zoho, MappingError, Retraction, RowChange};
use crmsync_schema::{Change, FieldSet, ObjectType, Provider, RemoteId, Version, WorkspaceId};

/// A row's key.
pub type RowKey = (WorkspaceId, Provider, RemoteId);

/// A table crmsync projects records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Contacts,
    Companies,
    Deals,
    /// Links between records, from every object's association changes.
    Associations,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Contacts,
        Table::Companies,
        Table::Deals,
        Table::Associations,
    ];

    /// The table of an object type.
    pub fn for_object(object: &ObjectType) -> Option<Table> {
        match object.as_str() {
            "contact" => Some(Table::Contacts),
            "company" => Some(Table::Companies),
            "deal" => Some(Table::Deals),
            _ => None,
        }
    }

    /// The table's name (a fixed identifier, never input).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Contacts => "contacts",
            Table::Companies => "companies",
            Table::Deals => "deals",
            Table::Associations => "associations",
        }
    }

    /// The object type, also the metrics' `entity_type`.
    pub const fn object(self) -> &'static str {
        match self {
            Table::Contacts => "contact",
            Table::Companies => "company",
            Table::Deals => "deal",
            Table::Associations => "association",
        }
    }

    /// Which raw events its consumer reads: one object's, or (associations) all.
    pub const fn object_filter(self) -> Option<&'static str> {
        match self {
            Table::Associations => None,
            other => Some(other.object()),
        }
    }

    /// The row changes one event about an `object` record implies (for the table of
    /// that object, or for associations): a snapshot or a provider change event, as
    /// `change` says.
    pub fn normalise(
        self,
        provider: Provider,
        object: &str,
        change: Option<Change>,
        data: &[u8],
        version: &Version,
    ) -> Result<Normalised, MappingError> {
        let rows = |rows: Vec<RowChange>| Normalised {
            rows,
            retractions: Vec::new(),
        };
        match (provider, change) {
            (Provider::Zoho, Some(Change::Snapshot)) if self == Table::Associations => {
                let (links, retractions) = zoho::mapping::snapshot_links(object, data, version)?;
                Ok(Normalised {
                    rows: links,
                    retractions,
                })
            }
            (Provider::Zoho, _) if self == Table::Associations => Ok(rows(Vec::new())),
            (Provider::Zoho, Some(Change::Snapshot)) => {
                zoho::mapping::snapshot_changes(self.object(), data, version).map(rows)
            }
            (Provider::Zoho, Some(Change::Deleted)) => {
                zoho::mapping::deleted_changes(data, version).map(rows)
            }
            // Inserts and updates name ids only: the hydrator's snapshots carry them.
            (Provider::Zoho, _) => Ok(rows(Vec::new())),
            (Provider::Odoo, Some(Change::Snapshot)) if self == Table::Associations => {
                let (links, retractions) = odoo::mapping::snapshot_links(object, data, version)?;
                Ok(Normalised {
                    rows: links,
                    retractions,
                })
            }
            (Provider::Odoo, _) if self == Table::Associations => Ok(rows(Vec::new())),
            (Provider::Odoo, Some(Change::Snapshot)) => {
                odoo::mapping::snapshot_changes(self.object(), data, version).map(rows)
            }
            (Provider::Odoo, Some(Change::Deleted)) => {
                odoo::mapping::deleted_changes(data, version).map(rows)
            }
            (Provider::HubSpot, Some(Change::Links)) if self == Table::Associations => {
                let (links, retraction) = hubspot::mapping::links_changes(data, version)?;
                Ok(Normalised {
                    rows: links,
                    retractions: vec![retraction],
                })
            }
            (_, Some(Change::Links)) => Ok(rows(Vec::new())),
            (_, change)
                if self == Table::Associations && change != Some(Change::AssociationChanged) =>
            {
                Ok(rows(Vec::new()))
            }
            (Provider::HubSpot, _) if self == Table::Associations => {
                hubspot::mapping::association_changes(data, version).map(rows)
            }
            (Provider::HubSpot, Some(Change::Snapshot)) => {
                hubspot::mapping::snapshot_changes(self.object(), data, version).map(rows)
            }
            (Provider::HubSpot, _) => {
                hubspot::mapping::changes(self.object(), data, version).map(rows)
            }
            (other, _) => Err(MappingError::Malformed {
                provider: other.as_str(),
                reason: format!("no {} mapping for this provider yet", self.object()),
            }),
        }
    }
}

/// What one event means for a table: rows to merge, and (link sets) links to mark
/// removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalised {
    pub rows: Vec<RowChange>,
    pub retractions: Vec<Retraction>,
}

/// Marks removed, as of each retraction's version, every link of its record to its
/// object type that it does not keep — in one statement for a whole batch. Of several
/// retractions of one link set only the newest counts: the field versions make the
/// older ones no-ops anyway.
pub async fn retract_all<'a>(
    tx: &mut PgConnection,
    retractions: impl Iterator<Item = &'a (WorkspaceId, Provider, Retraction)>,
) -> Result<(), sqlx::Error> {
    type SetKey<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);
    let mut newest: BTreeMap<SetKey<'a>, &'a Retraction> = BTreeMap::new();
    for (workspace, provider, r) in retractions {
        let key = (
            workspace.as_str(),
            provider.as_str(),
            r.from_type.as_str(),
            r.from_id.as_str(),
            r.to_type.as_str(),
        );
        let entry = newest.entry(key).or_insert(r);
        if r.version > entry.version {
            *entry = r;
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let mut columns: [Vec<&str>; 5] = Default::default();
    let mut keeps = Vec::with_capacity(newest.len());
    let mut versions = Vec::with_capacity(newest.len());
    for ((workspace, provider, from_type, from_id, to_type), r) in &newest {
        for (column, value) in columns
            .iter_mut()
            .zip([*workspace, *provider, *from_type, *from_id, *to_type])
        {
            column.push(value);
        }
        keeps.push(serde_json::to_value(&r.keep).unwrap_or(Value::Null));
        versions.push(r.version.as_str());
    }
    sqlx::query(
        r#"UPDATE associations AS a SET
               (fields, field_versions) = (
                   SELECT m.fields, m.versions
                   FROM crm_merge_fields(a.fields, a.field_versions,
                                         '{"$removed": true}'::jsonb,
                                         jsonb_build_object('$removed', r.version)) m),
               projected_at = now()
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::jsonb[], $7::text[])
                AS r(workspace_id, provider, from_type, from_id, to_type, keep, version)
           WHERE a.workspace_id = r.workspace_id AND a.provider = r.provider
             AND a.from_type = r.from_type AND a.from_id = r.from_id
             AND a.to_type = r.to_type AND NOT r.keep ? a.to_id"#,
    )
    .bind(&columns[0])
    .bind(&columns[1])
    .bind(&columns[2])
    .bind(&columns[3])
    .bind(&columns[4])
    .bind(&keeps)
    .bind(&versions)
    .execute(tx)
    .await?;
    Ok(())
}

/// Upserts the merged changes of a batch: one statement whatever the batch size.
/// Rows are written in key order so concurrent workers lock in the same order.
pub async fn upsert(
    tx: &mut PgConnection,
    table: Table,
    rows: &BTreeMap<RowKey, FieldSet>,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut workspaces = Vec::with_capacity(rows.len());
    let mut providers = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut fields = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    let mut updated: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(rows.len());
    for ((ws, provider, id), set) in rows {
        workspaces.push(ws.as_str());
        providers.push(provider.as_str());
        ids.push(id.as_str());
        fields.push(serde_json::to_value(&set.fields).unwrap_or(Value::Null));
        versions.push(serde_json::to_value(&set.versions).unwrap_or(Value::Null));
        updated.push(set.latest_time());
    }
    let sql = format!(
        r#"INSERT INTO {} AS c
               (workspace_id, provider, remote_id, fields, field_versions, source_updated_at)
           SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[],
                                $6::timestamptz[])
           ON CONFLICT (workspace_id, provider, remote_id) DO UPDATE SET
               (fields, field_versions) = (
                   SELECT m.fields, m.versions
                   FROM crm_merge_fields(c.fields, c.field_versions,
                                         EXCLUDED.fields, EXCLUDED.field_versions) m),
               source_updated_at = GREATEST(c.source_updated_at, EXCLUDED.source_updated_at),
               projected_at = now()"#,
        table.name()
    );
    let result = sqlx::query(&sql)
        .bind(&workspaces)
        .bind(&providers)
        .bind(&ids)
        .bind(&fields)
        .bind(&versions)
        .bind(&updated)
        .execute(tx)
        .await?;
    Ok(result.rows_affected())
}
