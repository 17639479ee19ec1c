//! Odoo search domains: Polish notation over `[field, operator, value]` leaves.
//!
//! `'&'` and `'|'` take the next two terms, `'!'` the next one, and terms left side by
//! side are ANDed. Operators: `=`, `!=` (`<>`), `>`, `>=`, `<`, `<=`, `in`, `not in`,
//! `like`, `not like`, `ilike`, `not ilike`, `=like`, `=ilike`; `(1, '=', 1)` and
//! `(0, '=', 1)` are the true and false leaves; paths such as `parent_id.name` follow
//! many2one fields. As in Odoo (which writes SQL), comparisons with an empty value
//! are false, `= False` means "is empty", and the negative operators (`!=`, `not in`,
//! `not like`, `not ilike`) also match empty values. Datetime values are compared with
//! the stored microseconds, as Postgres compares a `timestamp` column with a literal;
//! a bare date `YYYY-MM-DD` becomes `00:00:00`, or `23:59:59` for `>` and `<=`.

use std::cmp::Ordering;

use serde_json::Value;

use super::clock;
use super::errors::OdooError;
use super::models::{self, Kind, Model};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    In,
    NotIn,
    Like,
    NotLike,
    ILike,
    NotILike,
    EqLike,
    EqILike,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s.to_lowercase().as_str() {
            "=" | "==" => Op::Eq,
            "!=" | "<>" => Op::Ne,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "in" => Op::In,
            "not in" => Op::NotIn,
            "like" => Op::Like,
            "not like" => Op::NotLike,
            "ilike" => Op::ILike,
            "not ilike" => Op::NotILike,
            "=like" => Op::EqLike,
            "=ilike" => Op::EqILike,
            _ => return None,
        })
    }

    pub(crate) fn is_like(self) -> bool {
        matches!(
            self,
            Op::Like | Op::NotLike | Op::ILike | Op::NotILike | Op::EqLike | Op::EqILike
        )
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    /// Each step: the model and the index of its field; all but the last are many2one.
    pub path: Vec<(&'static Model, usize)>,
    pub op: Op,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Domain {
    True,
    False,
    Leaf(Leaf),
    Not(Box<Domain>),
    And(Box<Domain>, Box<Domain>),
    Or(Box<Domain>, Box<Domain>),
}

impl Domain {
    /// Whether a leaf on `field` (first path step) appears anywhere.
    pub(crate) fn mentions(&self, field: &str) -> bool {
        match self {
            Domain::Leaf(l) => l.path[0].0.fields[l.path[0].1].name == field,
            Domain::Not(d) => d.mentions(field),
            Domain::And(a, b) | Domain::Or(a, b) => a.mentions(field) || b.mentions(field),
            Domain::True | Domain::False => false,
        }
    }
}

/// `domain` restricted to active records: what `search` does on a model with an
/// `active` field unless the domain mentions `active` or the context says
/// `active_test: false`.
pub(crate) fn only_active(model: &'static Model, domain: Domain) -> Domain {
    let Some(idx) = model.idx("active") else {
        return domain;
    };
    if domain.mentions("active") {
        return domain;
    }
    let active = Domain::Leaf(Leaf {
        path: vec![(model, idx)],
        op: Op::Eq,
        value: Value::Bool(true),
    });
    Domain::And(Box::new(domain), Box::new(active))
}

/// Python's `repr`, for error messages that quote a leaf or a value.
pub(crate) fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn leaf_repr(items: &[Value]) -> String {
    format!(
        "({})",
        items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
    )
}

/// Parses a domain against `model`, checking every field and operator.
pub(crate) fn parse(model: &'static Model, domain: &Value) -> Result<Domain, OdooError> {
    let items: &[Value] = match domain {
        Value::Null | Value::Bool(false) => return Ok(Domain::True),
        Value::Array(a) => a,
        other => {
            return Err(OdooError::value_error(format!(
                "Invalid domain: {}",
                py_repr(other)
            )))
        }
    };
    let mut pos = 0;
    let mut terms = Vec::new();
    while pos < items.len() {
        terms.push(term(model, items, &mut pos, domain)?);
    }
    Ok(terms
        .into_iter()
        .reduce(|a, b| Domain::And(Box::new(a), Box::new(b)))
        .unwrap_or(Domain::True))
}

fn term(
    model: &'static Model,
    items: &[Value],
    pos: &mut usize,
    whole: &Value,
) -> Result<Domain, OdooError> {
    let Some(item) = items.get(*pos) else {
        return Err(OdooError::value_error(format!(
            "Domain {} is syntactically not correct.",
            py_repr(whole)
        )));
    };
    *pos += 1;
    match item {
        Value::String(op) if op == "&" || op == "|" => {
            let a = term(model, items, pos, whole)?;
            let b = term(model, items, pos, whole)?;
            Ok(if op == "&" {
                Domain::And(Box::new(a), Box::new(b))
            } else {
                Domain::Or(Box::new(a), Box::new(b))
            })
        }
        Value::String(op) if op == "!" => {
            Ok(Domain::Not(Box::new(term(model, items, pos, whole)?)))
        }
        Value::Array(leaf) if leaf.len() == 3 => parse_leaf(model, leaf),
        other => Err(OdooError::value_error(format!(
            "Invalid leaf {}",
            py_repr(other)
        ))),
    }
}

fn parse_leaf(model: &'static Model, items: &[Value]) -> Result<Domain, OdooError> {
    let invalid = || OdooError::value_error(format!("Invalid leaf {}", leaf_repr(items)));
    let op = items[1].as_str().and_then(Op::parse).ok_or_else(invalid)?;
    let path = match &items[0] {
        Value::String(p) => p,
        Value::Number(n) if op == Op::Eq && items[2].as_i64() == Some(1) => {
            return match n.as_i64() {
                Some(1) => Ok(Domain::True),
                Some(0) => Ok(Domain::False),
                _ => Err(invalid()),
            };
        }
        _ => return Err(invalid()),
    };
    let mut steps = Vec::new();
    let mut current = model;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        let idx = current.idx(seg).ok_or_else(|| {
            OdooError::value_error(format!(
                "Invalid field {}.{} in leaf {}",
                current.name,
                seg,
                leaf_repr(items)
            ))
        })?;
        steps.push((current, idx));
        if i + 1 < segments.len() {
            match current.fields[idx].kind {
                Kind::Many2one(rel) => {
                    current = models::model_in(current.major, rel).ok_or_else(invalid)?
                }
                _ => return Err(invalid()),
            }
        }
    }
    let (last_model, last_idx) = *steps.last().expect("a path has a field");
    let value = normalize(last_model.fields[last_idx].kind, op, &items[2])?;
    Ok(Domain::Leaf(Leaf {
        path: steps,
        op,
        value,
    }))
}

fn normalize(kind: Kind, op: Op, value: &Value) -> Result<Value, OdooError> {
    match (kind, value) {
        (Kind::Datetime, Value::String(s)) => {
            let s = if s.trim().len() == 10 {
                if matches!(op, Op::Gt | Op::Le) {
                    format!("{} 23:59:59", s.trim())
                } else {
                    format!("{} 00:00:00", s.trim())
                }
            } else {
                s.clone()
            };
            let t = clock::parse_datetime(&s).ok_or_else(|| OdooError::invalid_datetime(&s))?;
            Ok(Value::String(clock::stored_naive(t)))
        }
        (Kind::Date, Value::String(s)) => {
            let d = clock::parse_date(s.get(..10).unwrap_or(s))
                .ok_or_else(|| OdooError::invalid_datetime(s))?;
            Ok(Value::String(d.format("%Y-%m-%d").to_string()))
        }
        (Kind::Datetime | Kind::Date, Value::Array(items)) => items
            .iter()
            .map(|v| normalize(kind, op, v))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Ok(value.clone()),
    }
}

fn falsy(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(false))
}

fn is_empty(kind: Kind, v: &Value) -> bool {
    v.is_null() || (kind == Kind::Boolean && v == &Value::Bool(false))
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn equal(kind: Kind, v: &Value, x: &Value) -> bool {
    match (v, x) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Bool(a), b) if kind == Kind::Boolean => *a != falsy(b),
        (Value::String(a), Value::String(b)) => a == b,
        (a, b) => as_text(a) == as_text(b),
    }
}

/// How two non-empty values of one field order (numbers numerically, text by bytes).
pub(crate) fn ordering(v: &Value, x: &Value) -> Ordering {
    match (v, x) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (a, b) => as_text(a).cmp(&as_text(b)),
    }
}

/// SQL `LIKE`: `%` any run, `_` one character, `\` escapes.
fn like(text: &str, pattern: &str, insensitive: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if insensitive {
        (
            text.to_lowercase().chars().collect(),
            pattern.to_lowercase().chars().collect(),
        )
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    like_from(&t, &p)
}

fn like_from(t: &[char], p: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('%') => (0..=t.len()).any(|i| like_from(&t[i..], &p[1..])),
        Some('_') => !t.is_empty() && like_from(&t[1..], &p[1..]),
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && like_from(&t[1..], &p[2..]),
        Some(c) => t.first() == Some(c) && like_from(&t[1..], &p[1..]),
    }
}

/// Whether a field value `v` (stored form, or a related record's display name for
/// many2one text comparisons) satisfies `op operand`.
pub(crate) fn compare(kind: Kind, v: &Value, op: Op, operand: &Value) -> bool {
    let empty = is_empty(kind, v);
    match op {
        Op::Eq if falsy(operand) => empty,
        Op::Eq => !empty && equal(kind, v, operand),
        Op::Ne if falsy(operand) => !empty,
        Op::Ne => empty || !equal(kind, v, operand),
        Op::Gt | Op::Ge | Op::Lt | Op::Le => {
            if empty || falsy(operand) {
                return false;
            }
            let o = ordering(v, operand);
            match op {
                Op::Gt => o == Ordering::Greater,
                Op::Ge => o != Ordering::Less,
                Op::Lt => o == Ordering::Less,
                _ => o != Ordering::Greater,
            }
        }
        Op::In | Op::NotIn => {
            let list: Vec<&Value> = match operand {
                Value::Array(a) => a.iter().collect(),
                one => vec![one],
            };
            let has_false = list.iter().any(|x| falsy(x));
            let found = if empty {
                has_false
            } else {
                list.iter().any(|x| !falsy(x) && equal(kind, v, x))
            };
            (op == Op::In) == found
        }
        _ if falsy(operand) => match op {
            Op::NotLike | Op::NotILike => !empty,
            _ => empty,
        },
        _ => {
            let needle = as_text(operand);
            let (pattern, insensitive, negative) = match op {
                Op::Like => (format!("%{needle}%"), false, false),
                Op::NotLike => (format!("%{needle}%"), false, true),
                Op::ILike => (format!("%{needle}%"), true, false),
                Op::NotILike => (format!("%{needle}%"), true, true),
                Op::EqLike => (needle, false, false),
                _ => (needle, true, false),
            };
            if empty {
                return negative;
            }
            like(&as_text(v), &pattern, insensitive) != negative
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn like_patterns_match_as_sql_does() {
        for (text, pattern, ci, want) in [
            ("Acme Labs", "%me L%", false, true),
            ("Acme Labs", "%ME L%", false, false),
            ("Acme Labs", "%ME L%", true, true),
            ("Acme", "A_me", false, true),
            ("Acme", "A_e", false, false),
            ("50%", "50\\%", false, true),
            ("", "%", false, true),
        ] {
            assert_eq!(like(text, pattern, ci), want, "{text} like {pattern}");
        }
    }

    #[test]
    fn empty_values_follow_odoo_sql_semantics() {
        let k = Kind::Char;
        assert!(compare(k, &Value::Null, Op::Eq, &json!(false)));
        assert!(compare(k, &Value::Null, Op::Ne, &json!("x")));
        assert!(!compare(k, &Value::Null, Op::Gt, &json!("a")));
        assert!(compare(k, &Value::Null, Op::NotIn, &json!(["a"])));
        assert!(compare(k, &Value::Null, Op::In, &json!([false, "a"])));
        assert!(compare(k, &Value::Null, Op::NotILike, &json!("a")));
        assert!(compare(Kind::Boolean, &json!(false), Op::Eq, &json!(false)));
        assert!(compare(Kind::Boolean, &json!(true), Op::Ne, &json!(false)));
        assert!(!compare(Kind::Boolean, &json!(true), Op::Eq, &json!(false)));
    }
}
