//! The record tables (contacts, companies, deals, activities): normalisation by
//! provider and object, the batched upsert shared by all of them, and the activities
//! conflict rule (app-born calls are the app's).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres};

use crmsync_adapters::{hubspot, odoo, zoho, MappingError, Retraction, RowChange, Unlink};
use crmsync_schema::conflict::{app_born_activity, app_fields, Conflict};
use crmsync_schema::{Change, FieldSet, ObjectType, Provider, RemoteId, Version, WorkspaceId};

use crate::checkpoint;
use crate::mappings::Revision;

/// A row's key.
pub type RowKey = (WorkspaceId, Provider, RemoteId);

/// A table crmsync projects records into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Contacts,
    Companies,
    Deals,
    /// Calls and other activities; those the app pushed are the app's.
    Activities,
    /// Links between records, from every object's association changes.
    Associations,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Contacts,
        Table::Companies,
        Table::Deals,
        Table::Activities,
        Table::Associations,
    ];

    /// The table of an object type.
    pub fn for_object(object: &ObjectType) -> Option<Table> {
        match object.as_str() {
            "contact" => Some(Table::Contacts),
            "company" => Some(Table::Companies),
            "deal" => Some(Table::Deals),
            "activity" => Some(Table::Activities),
            _ => None,
        }
    }

    /// The table's name (a fixed identifier, never input).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Contacts => "contacts",
            Table::Companies => "companies",
            Table::Deals => "deals",
            Table::Activities => "activities",
            Table::Associations => "associations",
        }
    }

    /// The object type, also the metrics' `entity_type`.
    pub const fn object(self) -> &'static str {
        match self {
            Table::Contacts => "contact",
            Table::Companies => "company",
            Table::Deals => "deal",
            Table::Activities => "activity",
            Table::Associations => "association",
        }
    }

    /// Which raw events concern it: one object's, or (associations) every object's.
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
            ..Normalised::default()
        };
        match (provider, change) {
            // Only Zoho's Calls are read back so far; Odoo's activities are polled
            // raw, HubSpot's not at all (both kept in the stream for a replay).
            (Provider::HubSpot | Provider::Odoo, _) if self == Table::Activities => {
                Ok(rows(Vec::new()))
            }
            (Provider::Zoho, Some(Change::Snapshot)) if self == Table::Associations => {
                let (links, retractions) = zoho::mapping::snapshot_links(object, data, version)?;
                Ok(Normalised {
                    rows: links,
                    retractions,
                    ..Normalised::default()
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
                    ..Normalised::default()
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
                    ..Normalised::default()
                })
            }
            (Provider::HubSpot, Some(Change::Merged)) if self == Table::Associations => {
                Ok(Normalised {
                    unlinks: hubspot::mapping::merge_unlinks(object, data, version)?,
                    ..Normalised::default()
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

/// What one event means for a table: rows to merge, and links to mark removed (those
/// a link set does not list, and those of records merged away).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalised {
    pub rows: Vec<RowChange>,
    pub retractions: Vec<Retraction>,
    pub unlinks: Vec<Unlink>,
}

/// Marks a link row `a` removed as of `r.version` (an `UPDATE associations AS a …
/// FROM … AS r` sets this).
const MARK_REMOVED: &str = r#"(fields, field_versions) = (
        SELECT m.fields, m.versions
        FROM crm_merge_fields(a.fields, a.field_versions, '{"$removed": true}'::jsonb,
                              jsonb_build_object('$removed', r.version)) m),
    projected_at = now()"#;

/// Marks removed, as of each unlink's version, every live link naming its record,
/// from either side: in two statements (one a side) for a whole batch.
pub async fn unlink_all<'a>(
    tx: &mut PgConnection,
    unlinks: impl Iterator<Item = &'a (WorkspaceId, Provider, Unlink)>,
) -> Result<(), sqlx::Error> {
    let mut columns: [Vec<&str>; 5] = Default::default();
    for (workspace, provider, u) in unlinks {
        for (column, value) in columns.iter_mut().zip([
            workspace.as_str(),
            provider.as_str(),
            u.object_type.as_str(),
            u.id.as_str(),
            u.version.as_str(),
        ]) {
            column.push(value);
        }
    }
    if columns[0].is_empty() {
        return Ok(());
    }
    // One side at a time, live links only: each matches a partial index
    // (`associations_from`, `associations_to`) instead of every link of the account.
    for side in ["from", "to"] {
        sqlx::query(&format!(
            "UPDATE associations AS a SET {MARK_REMOVED}
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                  AS r(workspace_id, provider, type, id, version)
             WHERE a.workspace_id = r.workspace_id AND a.provider = r.provider
               AND a.{side}_type = r.type AND a.{side}_id = r.id AND NOT a.removed"
        ))
        .bind(&columns[0])
        .bind(&columns[1])
        .bind(&columns[2])
        .bind(&columns[3])
        .bind(&columns[4])
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
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
    sqlx::query(&format!(
        "UPDATE associations AS a SET {MARK_REMOVED}
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::jsonb[], $7::text[])
              AS r(workspace_id, provider, from_type, from_id, to_type, keep, version)
         WHERE a.workspace_id = r.workspace_id AND a.provider = r.provider
           AND a.from_type = r.from_type AND a.from_id = r.from_id
           AND a.to_type = r.to_type AND NOT r.keep ? a.to_id"
    ))
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
    upsert_into(tx, table, table.name(), rows).await
}

/// [`upsert`] into `target`, a table shaped as `table`'s (a replay's shadow table).
pub async fn upsert_into(
    tx: &mut PgConnection,
    table: Table,
    target: &str,
    rows: &BTreeMap<RowKey, FieldSet>,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sql = upsert_sql(table, target, 1, "");
    let result = UpsertColumns::of(rows)
        .bind(sqlx::query(&sql))
        .execute(tx)
        .await?;
    Ok(result.rows_affected())
}

/// Upserts the rows of each table, in the order given, and then advances the
/// checkpoint, in one statement. Postgres runs a lone statement as a transaction of
/// its own, so this is as atomic as BEGIN, an upsert per table, the checkpoint and
/// COMMIT, in one round trip instead of four or more.
///
/// The rows were mapped with the field mappings at `revision`: the statement writes
/// them only if that is still the mappings' revision as it reads them, and otherwise
/// writes nothing and answers `false` (read the mappings again, map, and retry). So
/// a projector need not read the revision in a round trip of its own before each
/// batch, and a mapping committed before the statement still applies to it.
///
/// Each upsert is a `WITH` query, and Postgres runs each to completion. Their order
/// it leaves open; here each reads the one before it (`count(*)` of its
/// `RETURNING`, a condition Postgres evaluates once, before the query's first row),
/// and the checkpoint reads the last. So they run in the order given and the
/// checkpoint after them all: rows are locked in the same order as in a transaction
/// of separate statements. (Table locks are all taken as the statement starts; all
/// are `ROW EXCLUSIVE`, which conflict with none of each other.)
pub async fn upsert_with_checkpoint(
    conn: &mut PgConnection,
    tables: &[(Table, BTreeMap<RowKey, FieldSet>)],
    advance: &checkpoint::Advance<'_>,
    revision: Revision,
) -> Result<bool, sqlx::Error> {
    if tables.is_empty() {
        checkpoint::advance(conn, advance).await?;
        return Ok(true);
    }
    // The revision is the last parameter, after the tables' six each and the
    // checkpoint's four. Every part checks it: all read one snapshot, so either all
    // write or none does.
    let current = format!(
        "(SELECT revision FROM crm_field_mappings_revision) = ${}",
        1 + 6 * tables.len() + 4
    );
    let mut with = Vec::with_capacity(tables.len());
    let mut after = format!(" WHERE {current}");
    for (i, (table, _)) in tables.iter().enumerate() {
        let upsert = upsert_sql(*table, table.name(), 1 + 6 * i, &after);
        with.push(format!("t{i} AS ({upsert} RETURNING 1)"));
        after = format!(" WHERE (SELECT count(*) FROM t{i}) >= 0 AND {current}");
    }
    let sql = format!(
        "WITH {} {}",
        with.join(",\n"),
        checkpoint::sql(1 + 6 * tables.len(), &after)
    );
    let mut query = sqlx::query(&sql);
    for (_, rows) in tables {
        query = UpsertColumns::of(rows).bind(query);
    }
    let written = advance.bind(query).bind(revision).execute(conn).await?;
    // The checkpoint's upsert touches its row whenever it runs.
    Ok(written.rows_affected() == 1)
}

/// The six columns of an upsert, in the order of its parameters.
struct UpsertColumns<'a> {
    workspaces: Vec<&'a str>,
    providers: Vec<&'a str>,
    ids: Vec<&'a str>,
    // Serialised straight into the statement's buffer, not through a `Value` each.
    fields: Vec<Json<&'a BTreeMap<String, Value>>>,
    versions: Vec<Json<&'a BTreeMap<String, Version>>>,
    updated: Vec<Option<DateTime<Utc>>>,
}

impl<'a> UpsertColumns<'a> {
    fn of(rows: &'a BTreeMap<RowKey, FieldSet>) -> Self {
        let mut columns = UpsertColumns {
            workspaces: Vec::with_capacity(rows.len()),
            providers: Vec::with_capacity(rows.len()),
            ids: Vec::with_capacity(rows.len()),
            fields: Vec::with_capacity(rows.len()),
            versions: Vec::with_capacity(rows.len()),
            updated: Vec::with_capacity(rows.len()),
        };
        for ((ws, provider, id), set) in rows {
            columns.workspaces.push(ws.as_str());
            columns.providers.push(provider.as_str());
            columns.ids.push(id.as_str());
            columns.fields.push(Json(&set.fields));
            columns.versions.push(Json(&set.versions));
            columns.updated.push(set.latest_time());
        }
        columns
    }

    fn bind<'q>(self, query: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments>
    where
        'a: 'q,
    {
        query
            .bind(self.workspaces)
            .bind(self.providers)
            .bind(self.ids)
            .bind(self.fields)
            .bind(self.versions)
            .bind(self.updated)
    }
}

/// The upsert of `table`'s rows into `target` (the table or its shadow), its six
/// parameters numbered from `$first`; `condition` (a `WHERE` clause, or nothing) is
/// put on the rows it reads.
fn upsert_sql(table: Table, target: &str, first: usize, condition: &str) -> String {
    // An app-born activity's own fields never take a CRM value (see
    // `rule_activities`, which records them as conflicts first).
    let (incoming, incoming_versions) = if table == Table::Activities {
        (
            "EXCLUDED.fields - ARRAY(SELECT jsonb_object_keys(coalesce(c.app_fields, '{}')))",
            "EXCLUDED.field_versions - ARRAY(SELECT jsonb_object_keys(coalesce(c.app_fields, '{}')))",
        )
    } else {
        ("EXCLUDED.fields", "EXCLUDED.field_versions")
    };
    let p: Vec<String> = (first..first + 6).map(|i| format!("${i}")).collect();
    format!(
        r#"INSERT INTO {target} AS c
               (workspace_id, provider, remote_id, fields, field_versions, source_updated_at)
           SELECT * FROM UNNEST({}::text[], {}::text[], {}::text[], {}::jsonb[], {}::jsonb[],
                                {}::timestamptz[]){condition}
           ON CONFLICT (workspace_id, provider, remote_id) DO UPDATE SET
               (fields, field_versions) = (
                   SELECT m.fields, m.versions
                   FROM crm_merge_fields(c.fields, c.field_versions,
                                         {incoming}, {incoming_versions}) m),
               source_updated_at = GREATEST(c.source_updated_at, EXCLUDED.source_updated_at),
               projected_at = now()"#,
        p[0], p[1], p[2], p[3], p[4], p[5],
    )
}

/// The activities rule (`crmsync_schema::conflict`): of a CRM change to an activity
/// the app pushed, only the fields the app did not write apply; each field it wrote
/// and the CRM changed is kept as a conflict instead. Applied to each change of a
/// batch on its own (before they are merged), with every existing row of the batch
/// locked, so that a call becoming app-born meanwhile waits for this transaction.
pub async fn rule_activities(
    tx: &mut PgConnection,
    changes: Vec<(RowKey, FieldSet)>,
) -> Result<Vec<(RowKey, FieldSet)>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(changes);
    }
    let keys: std::collections::BTreeSet<&RowKey> = changes.iter().map(|(k, _)| k).collect();
    let mut columns: [Vec<&str>; 3] = Default::default();
    for (ws, provider, id) in &keys {
        columns[0].push(ws.as_str());
        columns[1].push(provider.as_str());
        columns[2].push(id.as_str());
    }
    type Row = (
        String,
        String,
        String,
        Option<String>,
        Option<Value>,
        Option<String>,
    );
    let locked: Vec<Row> = sqlx::query_as(
        "SELECT a.workspace_id, a.provider, a.remote_id, a.app_workspace, a.app_fields,
                a.app_version
         FROM activities a
         JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(w, p, r)
           ON a.workspace_id = k.w AND a.provider = k.p AND a.remote_id = k.r
         ORDER BY 1, 2, 3
         FOR UPDATE OF a",
    )
    .bind(&columns[0])
    .bind(&columns[1])
    .bind(&columns[2])
    .fetch_all(&mut *tx)
    .await?;
    drop(columns);
    let mut app_born: BTreeMap<RowKey, (Option<String>, FieldSet)> = BTreeMap::new();
    for (ws, provider, id, app_workspace, fields, version) in locked {
        if let (Some(key), Some(fields)) = (row_key(&ws, &provider, &id), fields) {
            app_born.insert(key, (app_workspace, app_set(&fields, version.as_deref())));
        }
    }
    let mut ruled_changes = Vec::with_capacity(changes.len());
    for (key, set) in changes {
        let Some((app_workspace, app)) = app_born.get(&key) else {
            ruled_changes.push((key, set));
            continue;
        };
        let ruled = app_born_activity(app, &set);
        let provider = key.1.as_str();
        let at = ConflictAt {
            workspace: key.0.as_str(),
            provider,
            object: "activity",
            remote_id: key.2.as_str(),
            app_workspace: app_workspace.as_deref(),
        };
        record_conflicts(tx, &at, &ruled.conflicts).await?;
        ruled_changes.push((key, ruled.apply));
    }
    Ok(ruled_changes)
}

fn row_key(ws: &str, provider: &str, id: &str) -> Option<RowKey> {
    Some((
        WorkspaceId::parse(ws.to_owned()).ok()?,
        provider.parse().ok()?,
        RemoteId::parse(id.to_owned()).ok()?,
    ))
}

/// The app's fields of an app-born activity, at the version it wrote them.
pub fn app_set(fields: &Value, version: Option<&str>) -> FieldSet {
    let version: Version = version
        .and_then(|v| serde_json::from_value(Value::String(v.to_owned())).ok())
        .unwrap_or_else(|| Version::new(DateTime::<Utc>::UNIX_EPOCH, "app"));
    let fields: BTreeMap<String, Value> = match fields {
        Value::Object(map) => map.clone().into_iter().collect(),
        _ => BTreeMap::new(),
    };
    app_fields(&fields, &version)
}

/// The record a conflict is about.
#[derive(Debug, Clone, Copy)]
pub struct ConflictAt<'a> {
    pub workspace: &'a str,
    pub provider: &'a str,
    pub object: &'a str,
    pub remote_id: &'a str,
    pub app_workspace: Option<&'a str>,
}

/// Keeps `conflicts` of one record; one row per field and losing version, so a
/// redelivered change adds nothing.
pub async fn record_conflicts(
    tx: &mut PgConnection,
    at: &ConflictAt<'_>,
    conflicts: &[Conflict],
) -> Result<(), sqlx::Error> {
    if conflicts.is_empty() {
        return Ok(());
    }
    let mut fields = Vec::new();
    let mut kept = Vec::new();
    let mut kept_sources = Vec::new();
    let mut kept_versions = Vec::new();
    let mut lost = Vec::new();
    let mut lost_sources = Vec::new();
    let mut lost_versions = Vec::new();
    for c in conflicts {
        fields.push(c.field.as_str());
        kept.push(c.kept.clone());
        kept_sources.push(c.kept_source.as_str());
        kept_versions.push(c.kept_version.as_ref().map(|v| v.as_str().to_owned()));
        lost.push(c.lost.clone());
        lost_sources.push(c.lost_source.as_str());
        lost_versions.push(c.lost_version.as_str());
    }
    sqlx::query(
        "INSERT INTO crm_conflicts (workspace_id, provider, object, remote_id, app_workspace,
                                    field, kept_value, kept_source, kept_version,
                                    lost_value, lost_source, lost_version)
         SELECT $1, $2, $3, $4, $5, f, kv, ks, kver, lv, ls, lver
         FROM UNNEST($6::text[], $7::jsonb[], $8::text[], $9::text[], $10::jsonb[],
                     $11::text[], $12::text[]) AS c(f, kv, ks, kver, lv, ls, lver)
         ON CONFLICT (workspace_id, provider, object, remote_id, field, lost_digest)
         DO NOTHING",
    )
    .bind(at.workspace)
    .bind(at.provider)
    .bind(at.object)
    .bind(at.remote_id)
    .bind(at.app_workspace)
    .bind(&fields)
    .bind(&kept)
    .bind(&kept_sources)
    .bind(&kept_versions)
    .bind(&lost)
    .bind(&lost_sources)
    .bind(&lost_versions)
    .execute(tx)
    .await?;
    Ok(())
}
