//! The event contract: every event crmsync publishes validates against its JSON Schema
//! in `schema/json/` (CloudEvents' JSON form: the attributes beside `data`).

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream;
use serde_json::{json, Value};

use crmsync_engine::topology::Topology;
use crmsync_schema::binding;
use crmsync_schema::cloudevents::AttributesReader;
use crmsync_schema::envelope::data_bytes;

/// The schemas of `schema/json/`, by the event type each is for.
pub struct Contract {
    by_type: HashMap<String, jsonschema::Validator>,
    raw: jsonschema::Validator,
}

/// Where the schemas are.
pub fn schema_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/json")
}

impl Contract {
    pub fn load() -> Self {
        let mut by_type = HashMap::new();
        let mut raw = None;
        for entry in std::fs::read_dir(schema_dir()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(ty) = name.strip_suffix(".schema.json") else {
                continue;
            };
            let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{name} is not a valid JSON Schema: {e}"));
            if ty == "crmsync.raw.v1" {
                raw = Some(validator);
            } else {
                by_type.insert(ty.to_owned(), validator);
            }
        }
        Contract {
            by_type,
            raw: raw.expect("schema/json holds crmsync.raw.v1.schema.json"),
        }
    }

    /// Checks one event in JSON form against the schema for its type (a raw change's
    /// when no schema is named after the type).
    pub fn check(&self, event: &Value) -> Result<(), String> {
        let ty = event["type"].as_str().unwrap_or_default();
        let validator = self.by_type.get(ty).unwrap_or(&self.raw);
        let errors: Vec<String> = validator
            .iter_errors(event)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{ty}: {}", errors.join("; ")))
        }
    }
}

/// A stored message as a CloudEvent in JSON form.
pub fn event_json(
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Value, String> {
    let event = binding::from_message(headers, payload).map_err(|e| e.to_string())?;
    let bytes = data_bytes(&event);
    let data: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(json!({
        "specversion": event.specversion().to_string(),
        "id": event.id(),
        "source": event.source().to_string(),
        "type": event.ty(),
        "subject": event.subject(),
        "time": event.time().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        "datacontenttype": event.datacontenttype(),
        "data": data,
    }))
}

/// Every message of `stream`, by direct get, as (subject, JSON form or why not).
pub async fn messages(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<(String, Result<Value, String>)> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        // Work-queue streams have gaps where settled commands were removed.
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let json = event_json(Some(&message.headers), &message.payload);
        out.push((message.subject.to_string(), json));
    }
    out
}

/// Checks every event the engine of `topology` published (events and outbound
/// streams) against the contract; panics with the first failures. Returns how many
/// of each type were checked.
pub async fn assert_contract(
    js: &jetstream::Context,
    topology: &Topology,
) -> BTreeMap<String, usize> {
    let contract = Contract::load();
    let mut seen = BTreeMap::new();
    let mut failures = Vec::new();
    for stream in [topology.events_stream(), topology.outbound_stream()] {
        for (subject, json) in messages(js, &stream).await {
            match json.and_then(|e| contract.check(&e).map(|()| e)) {
                Ok(event) => {
                    *seen
                        .entry(event["type"].as_str().unwrap().to_owned())
                        .or_insert(0) += 1;
                }
                Err(why) => failures.push(format!("{subject}: {why}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} events break the contract, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    seen
}
