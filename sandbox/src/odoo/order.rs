//! `order` specifications: `"write_date asc, id asc"`, `"name desc"`, ….
//!
//! As in Postgres, empty values sort last ascending and first descending, and rows
//! equal on every key come back in heap order — the order they were last written, an
//! update moving a row to the end — so an `order` that is not a total order (say
//! `write_date` alone) can shuffle ties between two pages.

use std::cmp::Ordering;

use serde_json::Value;

use super::domain::ordering;
use super::errors::OdooError;
use super::models::Model;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    pub field: usize,
    pub desc: bool,
}

pub(crate) fn parse(model: &Model, spec: &str) -> Result<Vec<Key>, OdooError> {
    let invalid = || {
        OdooError::value_error(format!(
            "Invalid \"order\" specified ({spec}). A valid \"order\" specification is a comma-separated list of valid field names (optionally followed by asc/desc for the direction)"
        ))
    };
    let mut keys = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (name, desc) = match words.as_slice() {
            [name] => (*name, false),
            [name, dir, ..] if dir.eq_ignore_ascii_case("asc") => (*name, false),
            [name, dir, ..] if dir.eq_ignore_ascii_case("desc") => (*name, true),
            _ => return Err(invalid()),
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(invalid());
        }
        let field = model.idx(name).ok_or_else(|| {
            OdooError::value_error(format!("Invalid field '{name}' on model '{}'", model.name))
        })?;
        keys.push(Key { field, desc });
    }
    Ok(keys)
}

/// Compares two rows' sort values for one key (empty last ascending, first descending).
pub(crate) fn compare(a: &Value, b: &Value, desc: bool) -> Ordering {
    let o = match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => ordering(a, b),
    };
    if desc {
        o.reverse()
    } else {
        o
    }
}
