//! The model methods both protocols call, with Python's argument binding.
//!
//! JSON-RPC's `execute_kw(db, uid, key, model, method, args, kwargs)` passes
//! positional `args` (the first one being the record ids, unless the method is an
//! `@api.model` one) and keyword `kwargs` (`context` taken out); JSON-2 passes only
//! named arguments plus `ids` and `context`. Both end up here.
//!
//! Methods: `search`, `search_read`, `search_count`, `read`, `create`, `write`,
//! `unlink`, `fields_get`, `action_archive`, `action_unarchive`; `message_post` on
//! `res.partner` and `crm.lead`; `action_done` and `action_feedback` on
//! `mail.activity` (the activity is deleted and a message logged on its record, as
//! when "keep done activities" is off, the default); `context_get` on `res.users`.
//! Return values follow Odoo: `create` answers an id for one dict and a list of ids
//! for a list over JSON-RPC, and always a list over JSON-2, where methods returning
//! records (`search`, `create`, `message_post`) answer their ids.
//!
//! A `limit` of `0`/`false`/`null` means no limit. `search_read` without `fields`
//! reads every field. `read` with `load` other than `"_classic_read"` answers
//! many2one values as bare ids. `message_post` does not touch the record's
//! `write_date`, and neither does creating an activity.

use serde_json::{json, Map, Value};

use super::domain;
use super::errors::OdooError;
use super::mail;
use super::models::{self, Model};
use super::order;
use super::store::{Env, Store};
use super::{OdooSandbox, OdooVersion};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    JsonRpc,
    Json2,
}

/// One call of a model method.
#[derive(Debug)]
pub(crate) struct Call {
    pub model: String,
    pub method: String,
    /// JSON-2's `ids` (JSON-RPC takes them from `args`).
    pub ids: Value,
    pub args: Vec<Value>,
    pub kwargs: Map<String, Value>,
    pub context: Value,
    pub protocol: Protocol,
}

struct Sig {
    name: &'static str,
    api_model: bool,
    params: &'static [&'static str],
    required: usize,
    keyword_only: &'static [&'static str],
}

const fn sig(
    name: &'static str,
    api_model: bool,
    params: &'static [&'static str],
    required: usize,
) -> Sig {
    Sig {
        name,
        api_model,
        params,
        required,
        keyword_only: &[],
    }
}

const SIGS: &[Sig] = &[
    sig("search", true, &["domain", "offset", "limit", "order"], 1),
    sig(
        "search_read",
        true,
        &["domain", "fields", "offset", "limit", "order"],
        0,
    ),
    sig("search_count", true, &["domain", "limit"], 1),
    sig("read", false, &["fields", "load"], 0),
    sig("create", true, &["vals_list"], 1),
    sig("write", false, &["vals"], 1),
    sig("unlink", false, &[], 0),
    sig("fields_get", true, &["allfields", "attributes"], 0),
    sig("action_archive", false, &[], 0),
    sig("action_unarchive", false, &[], 0),
    Sig {
        name: "message_post",
        api_model: false,
        params: &[],
        required: 0,
        keyword_only: &[
            "body",
            "subject",
            "message_type",
            "subtype_xmlid",
            "subtype_id",
            "author_id",
            "partner_ids",
            "parent_id",
            "email_from",
            "body_is_html",
            "attachment_ids",
        ],
    },
    sig("action_done", false, &[], 0),
    sig("action_feedback", false, &["feedback", "attachment_ids"], 0),
    sig("context_get", true, &[], 0),
];

fn find_sig(model: &Model, method: &str) -> Option<&'static Sig> {
    let s = SIGS.iter().find(|s| s.name == method)?;
    let available = match method {
        "message_post" => model.thread,
        "action_done" | "action_feedback" => model.name == "mail.activity",
        "context_get" => model.name == "res.users",
        "action_archive" | "action_unarchive" => model.has_active(),
        _ => true,
    };
    available.then_some(s)
}

type Params = Map<String, Value>;

/// Binds arguments as Python would, answering its `TypeError`s (JSON-RPC) or
/// `inspect.Signature.bind`'s messages as 422 (JSON-2).
fn bind(
    sig: &Sig,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    protocol: Protocol,
) -> Result<Params, OdooError> {
    let fail = |python: String, bind: String| match protocol {
        Protocol::JsonRpc => OdooError::type_error(python),
        Protocol::Json2 => OdooError::unprocessable(bind),
    };
    if args.len() > sig.params.len() {
        return Err(fail(
            format!(
                "{}() takes {} positional arguments but {} were given",
                sig.name,
                sig.params.len() + 1,
                args.len() + 1
            ),
            "too many positional arguments".into(),
        ));
    }
    let mut bound: Params = sig
        .params
        .iter()
        .zip(args)
        .map(|(p, v)| ((*p).to_owned(), v))
        .collect();
    for (k, v) in kwargs {
        let known = sig.params.contains(&k.as_str()) || sig.keyword_only.contains(&k.as_str());
        if !known {
            return Err(fail(
                format!("{}() got an unexpected keyword argument '{k}'", sig.name),
                format!("got an unexpected keyword argument '{k}'"),
            ));
        }
        if bound.contains_key(&k) {
            return Err(fail(
                format!("{}() got multiple values for argument '{k}'", sig.name),
                format!("multiple values for argument '{k}'"),
            ));
        }
        bound.insert(k, v);
    }
    if let Some(missing) = sig.params[..sig.required]
        .iter()
        .find(|p| !bound.contains_key(**p))
    {
        return Err(fail(
            format!(
                "{}() missing 1 required positional argument: '{missing}'",
                sig.name
            ),
            format!("missing a required argument: '{missing}'"),
        ));
    }
    Ok(bound)
}

fn parse_ids(v: &Value) -> Result<Vec<i64>, OdooError> {
    match v {
        Value::Null | Value::Bool(false) => Ok(Vec::new()),
        Value::Number(n) => n
            .as_i64()
            .map(|id| vec![id])
            .ok_or_else(|| OdooError::type_error(format!("unhashable id: {n}"))),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_i64().ok_or_else(|| {
                    OdooError::value_error(format!(
                        "Invalid id: {} (expected an integer)",
                        domain::py_repr(x)
                    ))
                })
            })
            .collect(),
        other => Err(OdooError::value_error(format!(
            "Invalid ids: {}",
            domain::py_repr(other)
        ))),
    }
}

fn usize_param(p: &Params, name: &str) -> Result<Option<usize>, OdooError> {
    match p.get(name) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_u64().map(|n| n as usize).filter(|n| *n > 0)),
        Some(other) => Err(OdooError::type_error(format!(
            "'{name}' must be an integer, not {}",
            domain::py_repr(other)
        ))),
    }
}

fn field_list(model: &Model, v: Option<&Value>) -> Result<Vec<usize>, OdooError> {
    let names: Vec<&str> = match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Vec::new(),
        Some(Value::Array(a)) if a.is_empty() => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(other) => {
            return Err(OdooError::type_error(format!(
                "fields must be a list, not {}",
                domain::py_repr(other)
            )))
        }
    };
    if names.is_empty() {
        return Ok((0..model.fields.len())
            .filter(|i| model.fields[*i].name != "id")
            .collect());
    }
    names
        .into_iter()
        .filter(|n| *n != "id")
        .map(|n| {
            model.idx(n).ok_or_else(|| {
                OdooError::value_error(format!("Invalid field '{n}' on model '{}'", model.name))
            })
        })
        .collect()
}

fn active_test(context: &Value) -> bool {
    context.get("active_test") != Some(&Value::Bool(false))
}

fn search_ids(
    db: &Store,
    model: &'static Model,
    p: &Params,
    context: &Value,
    env: &Env,
) -> Result<Vec<i64>, OdooError> {
    let mut d = domain::parse(model, p.get("domain").unwrap_or(&Value::Null))?;
    if active_test(context) {
        d = domain::only_active(model, d);
    }
    let spec = match p.get("order") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.as_str(),
        _ => model.order,
    };
    let keys = order::parse(model, spec)?;
    let offset = usize_param(p, "offset")?.unwrap_or(0);
    let limit = usize_param(p, "limit")?;
    Ok(db.search(model, &d, &keys, offset, limit, env))
}

fn check_editable(model: &Model, op: &str) -> Result<(), OdooError> {
    if model.editable {
        return Ok(());
    }
    Err(OdooError::access_error(format!(
        "You are not allowed to {op} '{}' ({}) records.",
        model.description, model.name
    )))
}

fn vals_of(v: &Value) -> Result<&Map<String, Value>, OdooError> {
    v.as_object().ok_or_else(|| {
        OdooError::value_error(format!(
            "Invalid values: {} (expected a dict)",
            domain::py_repr(v)
        ))
    })
}

/// Runs one call as user `uid`, in its own transaction.
pub(crate) fn execute(sandbox: &OdooSandbox, uid: i64, call: Call) -> Result<Value, OdooError> {
    let v19 = sandbox.version == OdooVersion::V19;
    let model = match (
        models::model_in(sandbox.version.major(), &call.model),
        call.protocol,
    ) {
        (Some(m), _) => m,
        (None, Protocol::JsonRpc) => {
            return Err(OdooError::user_error(format!(
                "Object {} doesn't exist",
                call.model
            )))
        }
        (None, Protocol::Json2) => {
            return Err(OdooError::not_found(format!(
                "the model '{}' does not exist",
                call.model
            )))
        }
    };
    if call.method.starts_with('_') {
        let what = if v19 {
            format!("'{}.{}'", model.name, call.method)
        } else {
            call.method.clone()
        };
        return Err(OdooError::access_error(format!(
            "Private methods (such as {what}) cannot be called remotely."
        )));
    }
    let Some(sig) = find_sig(model, &call.method) else {
        let message = if v19 {
            format!("The method '{}.{}' does not exist", model.name, call.method)
        } else {
            format!(
                "The method '{}' does not exist on the model '{}'",
                call.method, model.name
            )
        };
        return Err(match call.protocol {
            Protocol::JsonRpc => OdooError::attribute_error(message),
            Protocol::Json2 => OdooError::not_found(message),
        });
    };
    let mut args = call.args;
    let ids = match (call.protocol, sig.api_model) {
        (Protocol::JsonRpc, true) => Vec::new(),
        (Protocol::JsonRpc, false) => {
            if args.is_empty() {
                return Err(OdooError::index_error("list index out of range"));
            }
            parse_ids(&args.remove(0))?
        }
        (Protocol::Json2, api_model) => {
            let ids = parse_ids(&call.ids)?;
            if api_model && !ids.is_empty() {
                return Err(OdooError::unprocessable(format!(
                    "cannot call {}.{} with ids",
                    model.name, call.method
                )));
            }
            ids
        }
    };
    let p = bind(sig, args, call.kwargs, call.protocol)?;
    let env = Env {
        uid,
        now: sandbox.clock.now(),
    };
    let json2 = call.protocol == Protocol::Json2;
    let ctx = &call.context;
    let store = &sandbox.store;
    match sig.name {
        "search" => {
            let db = store.read().expect("store lock");
            Ok(json!(search_ids(&db, model, &p, ctx, &env)?))
        }
        "search_count" => {
            let db = store.read().expect("store lock");
            let mut q = p.clone();
            q.remove("limit");
            let n = search_ids(&db, model, &q, ctx, &env)?.len();
            let limit = usize_param(&p, "limit")?;
            Ok(json!(limit.map_or(n, |l| n.min(l))))
        }
        "search_read" => {
            let db = store.read().expect("store lock");
            let fields = field_list(model, p.get("fields"))?;
            let ids = search_ids(&db, model, &p, ctx, &env)?;
            Ok(Value::Array(db.read(model, &ids, &fields, true, &env)))
        }
        "read" => {
            let db = store.read().expect("store lock");
            let fields = field_list(model, p.get("fields"))?;
            let classic = match p.get("load") {
                None => true,
                Some(v) => v.as_str() == Some("_classic_read"),
            };
            Ok(Value::Array(db.read(model, &ids, &fields, classic, &env)))
        }
        "fields_get" => Ok(fields_get(model, &p)),
        "create" => {
            check_editable(model, "create")?;
            let vals = p.get("vals_list").cloned().unwrap_or(Value::Null);
            let (list, single) = match vals {
                Value::Array(a) => (a, false),
                one @ Value::Object(_) => (vec![one], true),
                other => {
                    return Err(OdooError::value_error(format!(
                        "Invalid vals_list: {} (expected a dict or a list of dicts)",
                        domain::py_repr(&other)
                    )))
                }
            };
            let mut db = store.write().expect("store lock");
            let rows = list
                .iter()
                .map(|v| db.prepare_create(model, vals_of(v)?, &env))
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<i64> = rows
                .into_iter()
                .map(|row| {
                    let id = db.alloc_id(model.name);
                    db.insert(model, id, row, &env);
                    id
                })
                .collect();
            Ok(if single && !json2 {
                json!(ids[0])
            } else {
                json!(ids)
            })
        }
        "write" => {
            check_editable(model, "write")?;
            let vals = p.get("vals").cloned().unwrap_or(Value::Null);
            let mut db = store.write().expect("store lock");
            let changes = db.prepare_write(model, vals_of(&vals)?)?;
            db.update(model, &ids, &changes, &env)?;
            Ok(json!(true))
        }
        "unlink" => {
            check_editable(model, "unlink")?;
            let mut db = store.write().expect("store lock");
            db.check_unlink(model, &ids)?;
            db.remove(model, &ids);
            Ok(json!(true))
        }
        "action_archive" | "action_unarchive" => {
            check_editable(model, "write")?;
            let active = sig.name == "action_unarchive";
            let mut db = store.write().expect("store lock");
            let changes = vec![(model.magic("active"), json!(active))];
            db.update(model, &ids, &changes, &env)?;
            Ok(json!(true))
        }
        "message_post" => {
            let mut db = store.write().expect("store lock");
            let id = mail::message_post(&mut db, model, &ids, &p, &env)?;
            Ok(if json2 { json!([id]) } else { json!(id) })
        }
        "action_done" | "action_feedback" => {
            let mut db = store.write().expect("store lock");
            let feedback = p.get("feedback").and_then(Value::as_str).unwrap_or("");
            Ok(mail::activity_done(&mut db, &ids, feedback, &env)?
                .map_or(json!(false), |id| json!(id)))
        }
        "context_get" => Ok(json!({"lang": "en_US", "tz": "UTC", "uid": uid})),
        other => Err(OdooError::attribute_error(format!(
            "The method '{other}' does not exist on the model '{}'",
            model.name
        ))),
    }
}

fn fields_get(model: &Model, p: &Params) -> Value {
    let wanted: Option<Vec<&str>> = p
        .get("allfields")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let attributes: Option<Vec<&str>> = p
        .get("attributes")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let mut out = Map::new();
    for f in &model.fields {
        if wanted.as_ref().is_some_and(|w| !w.contains(&f.name)) {
            continue;
        }
        let mut d = f.describe();
        if let (Some(attrs), Value::Object(all)) = (&attributes, &mut d) {
            all.retain(|k, _| attrs.contains(&k.as_str()));
        }
        out.insert(f.name.into(), d);
    }
    Value::Object(out)
}
