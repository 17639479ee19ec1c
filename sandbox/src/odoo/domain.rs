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
//!
//! Domains come from clients, so parsing and matching never recurse on their input:
//! the prefix operators are read with an explicit stack (a run of one operator, such
//! as the `['|'] * (n - 1)` a client writes for an OR of n leaves, is one n-ary node),
//! nesting is capped at [`MAX_DEPTH`], and `like` patterns at [`MAX_PATTERN`]
//! characters.

use std::cmp::Ordering;

use serde_json::Value;

use super::clock;
use super::errors::OdooError;
use super::models::{self, Kind, Model};

/// How deeply operators of different kinds may nest in one domain.
pub(crate) const MAX_DEPTH: usize = 64;
/// The longest `like` pattern, in characters.
pub(crate) const MAX_PATTERN: usize = 1_000;

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
    And(Vec<Domain>),
    Or(Vec<Domain>),
}

impl Domain {
    /// Whether a leaf on `field` (first path step) appears anywhere.
    pub(crate) fn mentions(&self, field: &str) -> bool {
        match self {
            Domain::Leaf(l) => l.path[0].0.fields[l.path[0].1].name == field,
            Domain::Not(d) => d.mentions(field),
            Domain::And(terms) | Domain::Or(terms) => terms.iter().any(|d| d.mentions(field)),
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
    Domain::And(vec![domain, active])
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

/// A prefix operator waiting for its terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Not,
    And,
    Or,
}

#[derive(Debug)]
struct Pending {
    op: Prefix,
    /// How many terms complete it.
    needed: usize,
    terms: Vec<Domain>,
}

impl Pending {
    fn finish(mut self) -> Domain {
        match self.op {
            Prefix::Not => Domain::Not(Box::new(self.terms.pop().unwrap_or(Domain::True))),
            Prefix::And => Domain::And(self.terms),
            Prefix::Or => Domain::Or(self.terms),
        }
    }
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
    // Terms left side by side are ANDed.
    let mut top = Vec::new();
    let mut stack: Vec<Pending> = Vec::new();
    for item in items {
        let prefix = match item {
            Value::String(op) if op == "!" => Some(Prefix::Not),
            Value::String(op) if op == "&" => Some(Prefix::And),
            Value::String(op) if op == "|" => Some(Prefix::Or),
            _ => None,
        };
        if let Some(op) = prefix {
            let depth = stack.len();
            match stack.last_mut() {
                // `| | a b c` is `| a b c`: one node takes one more term.
                Some(p) if p.op == op && op != Prefix::Not => p.needed += 1,
                _ if depth >= MAX_DEPTH => {
                    return Err(OdooError::value_error(format!(
                        "Domain nested more than {MAX_DEPTH} levels deep is not supported"
                    )))
                }
                _ => stack.push(Pending {
                    op,
                    needed: if op == Prefix::Not { 1 } else { 2 },
                    terms: Vec::new(),
                }),
            }
            continue;
        }
        let mut term = match item {
            Value::Array(leaf) if leaf.len() == 3 => parse_leaf(model, leaf)?,
            other => {
                return Err(OdooError::value_error(format!(
                    "Invalid leaf {}",
                    py_repr(other)
                )))
            }
        };
        loop {
            let Some(p) = stack.last_mut() else {
                top.push(term);
                break;
            };
            p.terms.push(term);
            if p.terms.len() < p.needed {
                break;
            }
            term = stack.pop().expect("just seen").finish();
        }
    }
    if !stack.is_empty() {
        return Err(OdooError::value_error(format!(
            "Domain {} is syntactically not correct.",
            py_repr(domain)
        )));
    }
    Ok(match top.len() {
        0 => Domain::True,
        1 => top.pop().expect("one term"),
        _ => Domain::And(top),
    })
}

fn parse_leaf(model: &'static Model, items: &[Value]) -> Result<Domain, OdooError> {
    let invalid = || OdooError::value_error(format!("Invalid leaf {}", leaf_repr(items)));
    let op = items[1].as_str().and_then(Op::parse).ok_or_else(invalid)?;
    if op.is_like() && as_text(&items[2]).chars().count() > MAX_PATTERN {
        return Err(OdooError::value_error(format!(
            "Invalid leaf: a {} pattern may hold at most {MAX_PATTERN} characters",
            items[1].as_str().unwrap_or_default()
        )));
    }
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
    if segments.len() > MAX_DEPTH {
        return Err(OdooError::value_error(format!(
            "Invalid leaf: a path may follow at most {MAX_DEPTH} fields"
        )));
    }
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

/// One element of a `LIKE` pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    /// `%`: any run of characters.
    Any,
    /// `_`: one character.
    One,
    Char(char),
}

/// Iterative wildcard matching: on a mismatch, back up to the last `%` and let it take
/// one more character. Each `%` only ever moves forward, so this is O(text × pattern)
/// at worst, never exponential.
fn like_from(t: &[char], p: &[char]) -> bool {
    let mut tokens = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        tokens.push(match p[i] {
            '%' => Token::Any,
            '_' => Token::One,
            '\\' if i + 1 < p.len() => {
                i += 1;
                Token::Char(p[i])
            }
            c => Token::Char(c),
        });
        i += 1;
    }
    let (mut ti, mut pi) = (0, 0);
    // After the last `%` seen: the pattern position past it, and the text position it
    // has taken up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match tokens.get(pi) {
            Some(Token::Any) => {
                star = Some((pi + 1, ti));
                pi += 1;
            }
            Some(Token::One) => {
                ti += 1;
                pi += 1;
            }
            Some(Token::Char(c)) if *c == t[ti] => {
                ti += 1;
                pi += 1;
            }
            _ => match star {
                Some((after, taken)) => {
                    star = Some((after, taken + 1));
                    pi = after;
                    ti = taken + 1;
                }
                None => return false,
            },
        }
    }
    tokens[pi..].iter().all(|k| *k == Token::Any)
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
            ("", "", false, true),
            ("a", "", false, false),
            ("abc", "%%c", false, true),
            ("abcbc", "%bc", false, true),
            ("abcbd", "a%b_", false, true),
            ("ab", "a%b%", false, true),
            ("a_c", "a\\_c", false, true),
            ("abc", "a\\_c", false, false),
            ("trailing\\", "trailing\\", false, true),
        ] {
            assert_eq!(like(text, pattern, ci), want, "{text} like {pattern}");
        }
    }

    #[test]
    fn like_never_blows_up_on_many_wildcards() {
        let text = "a".repeat(5_000);
        let pattern = format!("{}b", "%a".repeat(500));
        let started = std::time::Instant::now();
        assert!(!like(&text, &pattern, false));
        assert!(like(&text, &"%a".repeat(500), false));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    fn partner() -> &'static Model {
        models::model_in(17, "res.partner").expect("res.partner")
    }

    #[test]
    fn deeply_nested_domains_get_a_clean_value_error() {
        let mut items: Vec<Value> = ["!", "&"]
            .iter()
            .cycle()
            .take(200_000)
            .map(|op| json!(op))
            .collect();
        items.extend(std::iter::repeat_n(json!(["name", "=", "x"]), 100_001));
        let err = parse(partner(), &Value::Array(items)).unwrap_err();
        assert_eq!(err.name, "builtins.ValueError");
        assert!(err.message.contains("nested"), "{}", err.message);

        let nots: Vec<Value> = std::iter::repeat_n(json!("!"), 100_000)
            .chain([json!(["name", "=", "x"])])
            .collect();
        assert!(parse(partner(), &Value::Array(nots)).is_err());

        let path = vec!["parent_id"; 100_000].join(".") + ".name";
        let err = parse(partner(), &json!([[path, "=", "x"]])).unwrap_err();
        assert_eq!(err.name, "builtins.ValueError");

        let err = parse(
            partner(),
            &json!([["name", "ilike", "%".repeat(MAX_PATTERN + 1)]]),
        )
        .unwrap_err();
        assert!(err.message.contains("pattern"), "{}", err.message);
    }

    #[test]
    fn long_runs_of_one_operator_parse_flat() {
        let n = 100_000;
        let items: Vec<Value> = std::iter::repeat_n(json!("|"), n - 1)
            .chain(std::iter::repeat_n(json!(["name", "=", "x"]), n))
            .collect();
        let Ok(Domain::Or(terms)) = parse(partner(), &Value::Array(items)) else {
            panic!("an OR of leaves")
        };
        assert_eq!(terms.len(), n);
        let flat: Vec<Value> = std::iter::repeat_n(json!(["name", "=", "x"]), n).collect();
        assert!(matches!(
            parse(partner(), &Value::Array(flat)),
            Ok(Domain::And(t)) if t.len() == n
        ));
    }

    #[test]
    fn prefix_operators_group_as_polish_notation() {
        let leaf = |v: &str| json!(["name", "=", v]);
        let shape = |d: &Domain| -> String {
            fn go(d: &Domain) -> String {
                match d {
                    Domain::True => "T".into(),
                    Domain::False => "F".into(),
                    Domain::Leaf(l) => l.value.as_str().unwrap_or("?").into(),
                    Domain::Not(d) => format!("!{}", go(d)),
                    Domain::And(t) => {
                        format!("&({})", t.iter().map(go).collect::<Vec<_>>().join(","))
                    }
                    Domain::Or(t) => {
                        format!("|({})", t.iter().map(go).collect::<Vec<_>>().join(","))
                    }
                }
            }
            go(d)
        };
        for (domain, want) in [
            (
                json!(["|", leaf("a"), "&", leaf("b"), leaf("c")]),
                "|(a,&(b,c))",
            ),
            (
                json!(["|", "|", leaf("a"), leaf("b"), leaf("c")]),
                "|(a,b,c)",
            ),
            (
                json!(["!", "|", leaf("a"), leaf("b"), leaf("c")]),
                "&(!|(a,b),c)",
            ),
            (json!([leaf("a"), "!", leaf("b")]), "&(a,!b)"),
            (json!([[1, "=", 1]]), "T"),
        ] {
            assert_eq!(shape(&parse(partner(), &domain).unwrap()), want, "{domain}");
        }
        for bad in [
            json!(["|", leaf("a")]),
            json!(["!"]),
            json!(["&", leaf("a"), "|"]),
        ] {
            assert!(parse(partner(), &bad).is_err(), "{bad}");
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
