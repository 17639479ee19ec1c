//! Records as Zoho answers them: ids as strings, lookups as `{name, id}`, users as
//! `{name, id, email}`, multi-select picklists as arrays, dates `YYYY-MM-DD`,
//! date-times with the org's offset, empty fields as `null`.

use serde_json::{json, Map, Value as Json};

use super::schema::{Column, Kind, Module};
use super::store::{format_time, full_name, Record, Store, Value};

pub fn user_json(store: &Store, id: u64) -> Json {
    match store.user(id) {
        Some(u) => json!({"name": u.name, "id": u.id.to_string(), "email": u.email}),
        None => Json::Null,
    }
}

/// `{name, id}` of a user, as write answers and the recycle bin show them.
pub fn user_ref(store: &Store, id: u64) -> Json {
    match store.user(id) {
        Some(u) => json!({"name": u.name, "id": u.id.to_string()}),
        None => Json::Null,
    }
}

fn number(x: f64) -> Json {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Seconds in a `mm:ss` (or `hh:mm:ss`) duration.
pub fn duration_seconds(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let mut total = 0i64;
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 4 {
            return None;
        }
        let v: i64 = p.parse().ok()?;
        if i > 0 && v >= 60 {
            return None;
        }
        total = total * 60 + v;
    }
    Some(total)
}

/// A stored value as JSON.
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Text(s) => json!(s),
        Value::Int(i) => json!(i),
        Value::Decimal(x) => number(*x),
        Value::Bool(b) => json!(b),
        Value::Date(d) => json!(d.format("%Y-%m-%d").to_string()),
        Value::DateTime(ms) => json!(format_time(*ms)),
        Value::Lookup(_) | Value::ModuleLookup(..) => Json::Null,
        Value::Multi(items) => json!(items),
    }
}

fn lookup_json(store: &Store, module: Module, id: u64) -> Json {
    json!({"name": store.lookup_name(module, id), "id": id.to_string()})
}

/// One column of a record.
pub fn column_json(store: &Store, module: Module, record: &Record, column: Column) -> Json {
    match column {
        Column::Id => json!(record.id.to_string()),
        Column::Owner => user_json(store, record.owner),
        Column::CreatedTime => json!(format_time(record.created)),
        Column::ModifiedTime => json!(format_time(record.modified)),
        Column::CreatedBy => user_json(store, record.created_by),
        Column::ModifiedBy => user_json(store, record.modified_by),
        Column::Field(i) => {
            let field = module.field(i);
            match (field.kind, record.value(i)) {
                (Kind::Computed, _) => computed(module, record, field.name),
                (_, None) => Json::Null,
                (Kind::Lookup(target), Some(Value::Lookup(id))) => lookup_json(store, target, *id),
                (_, Some(Value::ModuleLookup(target, id))) => lookup_json(store, *target, *id),
                (_, Some(v)) => value_json(v),
            }
        }
    }
}

fn computed(module: Module, record: &Record, name: &str) -> Json {
    match name {
        "Full_Name" => json!(full_name(
            record.text(module, "First_Name"),
            record.text(module, "Last_Name")
        )),
        "Call_Duration_in_seconds" => json!(record
            .text(module, "Call_Duration")
            .and_then(duration_seconds)),
        _ => Json::Null,
    }
}

/// A record with the given columns; `id` always comes first, and a multi-module
/// lookup brings its `$se_module`.
pub fn record_json(store: &Store, module: Module, record: &Record, columns: &[Column]) -> Json {
    let mut out = Map::new();
    out.insert("id".into(), json!(record.id.to_string()));
    for &column in columns {
        out.insert(
            module.column_name(column).into(),
            column_json(store, module, record, column),
        );
        if let Column::Field(i) = column {
            if matches!(module.field(i).kind, Kind::MultiModuleLookup(_)) {
                let se = match record.value(i) {
                    Some(Value::ModuleLookup(m, _)) => json!(m.name()),
                    _ => Json::Null,
                };
                out.insert("$se_module".into(), se);
            }
        }
    }
    Json::Object(out)
}

/// The `details` of a successful write.
pub fn write_details(store: &Store, record: &Record) -> Json {
    json!({
        "Modified_Time": format_time(record.modified),
        "Modified_By": user_ref(store, record.modified_by),
        "Created_Time": format_time(record.created),
        "id": record.id.to_string(),
        "Created_By": user_ref(store, record.created_by),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_zoho_writes_them() {
        for (text, secs) in [
            ("05:30", Some(330)),
            ("00:00", Some(0)),
            ("120:05", Some(7205)),
            ("1:02:03", Some(3723)),
            ("5:75", None),
            ("five", None),
            ("10", None),
            ("", None),
        ] {
            assert_eq!(duration_seconds(text), secs, "{text}");
        }
    }
}
