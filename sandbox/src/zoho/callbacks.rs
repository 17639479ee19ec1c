//! Notification callbacks. Every change, by the API or the mutation driver, is posted
//! to each live channel watching it: one JSON body per module and operation for the
//! changes made together (at most 100 ids a body), `{server_time, query_params,
//! module, resource_uri, ids, affected_fields, operation, channel_id, token}` (plus
//! `affected_values` when the channel asked for them). `affected_fields` lists, per
//! updated record, the fields that changed: `[{"<id>": ["Email"]}]`. Zoho neither
//! signs nor retries callbacks: the echoed `token` is the check, and a lost delivery
//! is lost (`drop-webhooks` faults lose some on purpose).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::notifications::{Channel, Event};
use super::render::column_json;
use super::schema::Module;
use super::store::{now_ms, Change, Operation, Store};
use super::ZohoSandbox;

const MAX_IDS_PER_CALLBACK: usize = 100;

/// The query string of a notify URL, as `query_params`.
fn query_params(url: &str) -> Json {
    let mut out = Map::new();
    if let Ok(u) = reqwest::Url::parse(url) {
        for (k, v) in u.query_pairs() {
            out.insert(k.into_owned(), json!(v.into_owned()));
        }
    }
    Json::Object(out)
}

/// Changes made together, grouped by module and operation, in order.
fn batches(changes: &[Change]) -> Vec<(Module, Operation, Vec<&Change>)> {
    let mut out: Vec<(Module, Operation, Vec<&Change>)> = Vec::new();
    for c in changes {
        match out
            .iter_mut()
            .find(|(m, o, _)| *m == c.module && *o == c.operation)
        {
            Some((_, _, list)) => list.push(c),
            None => out.push((c.module, c.operation, vec![c])),
        }
    }
    out
}

/// The body posted to `channel` for changes of one module and operation.
fn body(
    store: &Store,
    channel: &Channel,
    module: Module,
    op: Operation,
    chunk: &[&Change],
) -> Json {
    let ids: Vec<String> = chunk.iter().map(|c| c.id.to_string()).collect();
    let affected: Vec<Json> = if op == Operation::Update {
        chunk
            .iter()
            .map(|c| {
                let mut entry = Map::new();
                entry.insert(c.id.to_string(), json!(c.fields));
                Json::Object(entry)
            })
            .collect()
    } else {
        Vec::new()
    };
    let channel_id = channel
        .id
        .parse::<u64>()
        .map_or_else(|_| json!(channel.id), |n| json!(n));
    let mut body = json!({
        "server_time": now_ms(),
        "query_params": query_params(&channel.notify_url),
        "module": module.name(),
        "resource_uri": channel.resource_uri(module),
        "ids": ids,
        "affected_fields": affected,
        "operation": op.name(),
        "channel_id": channel_id,
        "token": channel.token,
    });
    if channel.return_affected_field_values && op == Operation::Update {
        let values: Vec<Json> = chunk
            .iter()
            .filter_map(|c| {
                let record = store.record(module, c.id)?;
                let mut values = Map::new();
                for f in &c.fields {
                    if let Some(col) = module.column(f) {
                        values.insert((*f).to_owned(), column_json(store, module, record, col));
                    }
                }
                Some(json!({"record_id": c.id.to_string(), "values": values}))
            })
            .collect();
        body["affected_values"] = json!(values);
    }
    body
}

impl ZohoSandbox {
    /// Posts the callbacks for `changes` to every live channel watching them.
    pub(crate) fn notify(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let channels = self.channels().live();
        if channels.is_empty() {
            return;
        }
        let mut deliveries = Vec::new();
        {
            let store = self.store();
            for (module, op, list) in batches(&changes) {
                let watching = channels
                    .iter()
                    .filter(|c| c.events.contains(&(module, Event::of(op))));
                for channel in watching {
                    for chunk in list.chunks(MAX_IDS_PER_CALLBACK) {
                        let body = body(&store, channel, module, op, chunk);
                        deliveries.push((channel.notify_url.clone(), body));
                    }
                }
            }
        }
        self.deliver(deliveries);
    }

    /// Posts each body in its own task, unless fault injection loses it.
    fn deliver(&self, deliveries: Vec<(String, Json)>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                count = deliveries.len(),
                "zoho notifications dropped: no Tokio runtime"
            );
            return;
        };
        for (url, body) in deliveries {
            if self.faults().drop_webhook() {
                self.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%url, "zoho notification dropped by fault injection");
                continue;
            }
            self.callbacks_sent.fetch_add(1, Ordering::Relaxed);
            let http = self.http.clone();
            runtime.spawn(async move {
                let sent = http
                    .post(&url)
                    .timeout(Duration::from_secs(10))
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::debug!(%url, status = %r.status(), "zoho notification refused")
                    }
                    Err(e) => tracing::debug!(%url, error = %e, "zoho notification failed"),
                }
            });
        }
    }
}
