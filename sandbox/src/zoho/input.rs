//! Record bodies as Zoho reads them: every key must be a field of the module (a
//! misspelt API name is refused), values must have the field's type, lookups must
//! point at live records, `What_Id` needs its `$se_module`. System fields (`id`,
//! `Created_Time`, ...), computed fields and other `$` keys are ignored.

use serde_json::{json, Map, Value as Json};

use super::error::ApiError;
use super::render::duration_seconds;
use super::schema::{Kind, Module};
use super::store::{parse_date, parse_time, Store, Value};

/// The fields a record body sets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub set: Vec<(usize, Option<Value>)>,
    pub owner: Option<u64>,
}

const READ_ONLY: &[&str] = &[
    "id",
    "Created_Time",
    "Modified_Time",
    "Created_By",
    "Modified_By",
];

fn max_length(kind: Kind) -> usize {
    match kind {
        Kind::TextArea => 32_000,
        Kind::Email => 100,
        Kind::Phone => 30,
        _ => 255,
    }
}

/// The id in a lookup value: `{"id": "..."}` or a bare id, as string or number.
pub fn lookup_id(v: &Json) -> Option<u64> {
    let id = match v {
        Json::Object(o) => o.get("id")?,
        other => other,
    };
    match id {
        Json::String(s) => s.trim().parse().ok(),
        Json::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// Reads record `index` of a bulk body.
pub fn parse_record(
    store: &Store,
    module: Module,
    body: &Map<String, Json>,
    index: usize,
) -> Result<Parsed, ApiError> {
    let mut parsed = Parsed::default();
    for (key, v) in body {
        if READ_ONLY.contains(&key.as_str()) || key.starts_with('$') {
            continue;
        }
        if key == "Owner" {
            let owner = lookup_id(v)
                .filter(|id| store.user(*id).is_some())
                .ok_or_else(|| ApiError::invalid_field(index, "Owner", Some("ownerlookup")))?;
            parsed.owner = Some(owner);
            continue;
        }
        let Some(fi) = module.field_index(key) else {
            return Err(ApiError::bad_request(
                "INVALID_DATA",
                "the field api name given seems to be invalid",
            )
            .with_details(
                json!({"api_name": key, "json_path": format!("$.data[{index}].{key}")}),
            ));
        };
        let field = module.field(fi);
        if field.kind == Kind::Computed {
            continue;
        }
        let value = parse_value(store, body, index, field.name, field.kind, v)?;
        parsed.set.push((fi, value));
    }
    Ok(parsed)
}

fn parse_value(
    store: &Store,
    body: &Map<String, Json>,
    index: usize,
    name: &str,
    kind: Kind,
    v: &Json,
) -> Result<Option<Value>, ApiError> {
    let bad = |expected: &str| ApiError::invalid_field(index, name, Some(expected));
    if v.is_null() {
        return Ok(None);
    }
    let value = match kind {
        Kind::Text | Kind::TextArea | Kind::Email | Kind::Phone => {
            let s = v.as_str().ok_or_else(|| bad("text"))?;
            if s.chars().count() > max_length(kind) {
                let mut err = ApiError::invalid_field(index, name, None);
                err.details["maximum_length"] = json!(max_length(kind));
                return Err(err);
            }
            if s.is_empty() {
                return Ok(None);
            }
            if kind == Kind::Email && !looks_like_email(s) {
                return Err(bad("email"));
            }
            Value::Text(s.to_owned())
        }
        Kind::Picklist(values, restricted) => {
            let s = v.as_str().ok_or_else(|| bad("picklist"))?;
            if s.is_empty() || s == "-None-" {
                return Ok(None);
            }
            if restricted && !values.contains(&s) {
                return Err(bad("picklist"));
            }
            Value::Text(s.to_owned())
        }
        Kind::MultiSelect(_) => {
            let items = v.as_array().ok_or_else(|| bad("jsonarray"))?;
            let items: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect();
            let items = items.ok_or_else(|| bad("jsonarray"))?;
            if items.is_empty() {
                return Ok(None);
            }
            Value::Multi(items)
        }
        Kind::Integer => Value::Int(v.as_i64().ok_or_else(|| bad("integer"))?),
        Kind::Currency => {
            let x = match v {
                Json::Number(n) => n.as_f64(),
                Json::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            Value::Decimal(
                x.filter(|x: &f64| x.is_finite())
                    .ok_or_else(|| bad("double"))?,
            )
        }
        Kind::Boolean => Value::Bool(v.as_bool().ok_or_else(|| bad("boolean"))?),
        Kind::Date => Value::Date(v.as_str().and_then(parse_date).ok_or_else(|| bad("date"))?),
        Kind::DateTime => Value::DateTime(
            v.as_str()
                .and_then(parse_time)
                .ok_or_else(|| bad("datetime"))?,
        ),
        Kind::Duration => {
            let s = v.as_str().ok_or_else(|| bad("text"))?;
            duration_seconds(s).ok_or_else(|| bad("text"))?;
            Value::Text(s.to_owned())
        }
        Kind::Lookup(target) => {
            let id = lookup_id(v).ok_or_else(|| bad("lookup"))?;
            if store.record(target, id).is_none() {
                return Err(missing_target(index, name, id));
            }
            Value::Lookup(id)
        }
        Kind::MultiModuleLookup(allowed) => {
            let id = lookup_id(v).ok_or_else(|| bad("lookup"))?;
            let se = body
                .get("$se_module")
                .and_then(Json::as_str)
                .ok_or_else(|| ApiError::mandatory_missing(index, "$se_module"))?;
            let target = Module::parse(se)
                .filter(|m| allowed.contains(m))
                .ok_or_else(|| ApiError::invalid_field(index, "$se_module", None))?;
            if store.record(target, id).is_none() {
                return Err(missing_target(index, name, id));
            }
            Value::ModuleLookup(target, id)
        }
        Kind::Computed => return Ok(None),
    };
    Ok(Some(value))
}

fn missing_target(index: usize, name: &str, id: u64) -> ApiError {
    ApiError::bad_request("INVALID_DATA", "the id given seems to be invalid").with_details(json!({
        "api_name": name,
        "json_path": format!("$.data[{index}].{name}"),
        "id": id.to_string(),
    }))
}

/// The first mandatory field a new record lacks.
pub fn check_mandatory(
    module: Module,
    values: &[Option<Value>],
    index: usize,
) -> Result<(), ApiError> {
    for (i, field) in module.fields().iter().enumerate() {
        if field.mandatory && values.get(i).is_none_or(Option::is_none) {
            return Err(ApiError::mandatory_missing(index, field.name));
        }
    }
    Ok(())
}

/// An update may not empty a mandatory field.
pub fn check_not_cleared(module: Module, parsed: &Parsed, index: usize) -> Result<(), ApiError> {
    for (i, value) in &parsed.set {
        let field = module.field(*i);
        if field.mandatory && value.is_none() {
            return Err(ApiError::mandatory_missing(index, field.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn typed_values_are_checked_field_by_field() {
        let store = Store::new(1);
        let m = Module::Contacts;
        let ok = parse_record(
            &store,
            m,
            &obj(json!({"Last_Name": "Hopper", "Interests": ["Mobile"], "Email_Opt_Out": true, "id": "1", "$approved": true})),
            0,
        )
        .unwrap();
        assert_eq!(ok.set.len(), 3);
        for (body, code, api_name) in [
            (json!({"Last_Nme": "x"}), "INVALID_DATA", "Last_Nme"),
            (json!({"Interests": "Mobile"}), "INVALID_DATA", "Interests"),
            (json!({"Email": "not-an-email"}), "INVALID_DATA", "Email"),
            (
                json!({"Date_of_Birth": "01/02/1990"}),
                "INVALID_DATA",
                "Date_of_Birth",
            ),
            (
                json!({"Account_Name": {"id": "42"}}),
                "INVALID_DATA",
                "Account_Name",
            ),
            (json!({"Owner": {"id": "42"}}), "INVALID_DATA", "Owner"),
        ] {
            let err = parse_record(&store, m, &obj(body.clone()), 3).unwrap_err();
            assert_eq!(err.code, code, "{body}");
            assert_eq!(err.details["api_name"], api_name, "{body}");
            assert_eq!(err.details["json_path"], format!("$.data[3].{api_name}"));
        }
        let call = parse_record(
            &store,
            Module::Calls,
            &obj(json!({"What_Id": {"id": "1"}})),
            0,
        )
        .unwrap_err();
        assert_eq!(call.code, "MANDATORY_NOT_FOUND");
        assert_eq!(call.details["api_name"], "$se_module");
    }
}
