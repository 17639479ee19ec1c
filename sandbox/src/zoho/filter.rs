//! Conditions over records, shared by the search API's `criteria` and COQL's WHERE:
//! typed comparisons (text case-insensitively, date-times as instants whatever their
//! offset, lookups by id, multi-select picklists by membership), SQL-style nulls.

use std::cmp::Ordering;

use chrono::NaiveDate;
use serde_json::json;

use super::error::ApiError;
use super::schema::{Column, Kind, Module};
use super::store::{full_name, parse_date, parse_time, Record, Store, Value};

/// What a column holds, for comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Text,
    Number,
    Id,
    Bool,
    Time,
    Date,
    Multi,
}

/// A column, or a column of the record a lookup points at (`Account_Name.Industry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Column(Column),
    Through(usize, Module, Column),
    UserId(Column),
}

/// A literal as written in a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Num(String),
    Bool(bool),
    Null,
}

impl Literal {
    pub fn text(&self) -> String {
        match self {
            Literal::Str(s) | Literal::Num(s) => s.clone(),
            Literal::Bool(b) => b.to_string(),
            Literal::Null => "null".into(),
        }
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    StartsWith,
    Like,
    NotLike,
    In,
    NotIn,
    Between,
    IsNull,
    IsNotNull,
}

impl Cmp {
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "!=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::StartsWith => "starts_with",
            Cmp::Like => "like",
            Cmp::NotLike => "not like",
            Cmp::In => "in",
            Cmp::NotIn => "not in",
            Cmp::Between => "between",
            Cmp::IsNull => "is null",
            Cmp::IsNotNull => "is not null",
        }
    }
}

/// A typed value to compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Text(String),
    Number(f64),
    Id(u64),
    Bool(bool),
    Time(i64),
    Date(NaiveDate),
    Multi(Vec<String>),
}

/// One condition, its operands already typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub path: Path,
    pub cmp: Cmp,
    pub operands: Vec<Scalar>,
}

/// A boolean expression of conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Cond(Cond),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    pub fn count(&self) -> usize {
        match self {
            Expr::Cond(_) => 1,
            Expr::And(a, b) | Expr::Or(a, b) => a.count() + b.count(),
        }
    }
}

fn kind_ty(kind: Kind) -> Ty {
    match kind {
        Kind::Text | Kind::TextArea | Kind::Email | Kind::Phone | Kind::Picklist(..) => Ty::Text,
        Kind::Duration | Kind::Computed => Ty::Text,
        Kind::MultiSelect(_) => Ty::Multi,
        Kind::Integer | Kind::Currency => Ty::Number,
        Kind::Boolean => Ty::Bool,
        Kind::Date => Ty::Date,
        Kind::DateTime => Ty::Time,
        Kind::Lookup(_) | Kind::MultiModuleLookup(_) => Ty::Id,
    }
}

pub fn column_ty(module: Module, column: Column) -> Ty {
    match column {
        Column::Id | Column::Owner | Column::CreatedBy | Column::ModifiedBy => Ty::Id,
        Column::CreatedTime | Column::ModifiedTime => Ty::Time,
        Column::Field(i) => {
            let field = module.field(i);
            if field.name == "Call_Duration_in_seconds" {
                Ty::Number
            } else {
                kind_ty(field.kind)
            }
        }
    }
}

pub fn path_ty(module: Module, path: Path) -> Ty {
    match path {
        Path::Column(c) => column_ty(module, c),
        Path::Through(_, target, c) => column_ty(target, c),
        Path::UserId(_) => Ty::Id,
    }
}

/// Resolves `Field` or `Lookup.Field` (and `Owner.id`) in `module`.
pub fn resolve(module: Module, name: &str) -> Option<Path> {
    match name.split_once('.') {
        None => module.column(name).map(Path::Column),
        Some((head, tail)) => match module.column(head)? {
            c @ (Column::Owner | Column::CreatedBy | Column::ModifiedBy) if tail == "id" => {
                Some(Path::UserId(c))
            }
            Column::Field(i) => match module.field(i).kind {
                Kind::Lookup(target) => Some(Path::Through(i, target, target.column(tail)?)),
                _ => None,
            },
            _ => None,
        },
    }
}

/// Types a literal for a column of type `ty`; `None` when it cannot be one.
pub fn typed(ty: Ty, literal: &Literal) -> Option<Scalar> {
    if *literal == Literal::Null {
        return Some(Scalar::Null);
    }
    let text = literal.text();
    Some(match ty {
        Ty::Text | Ty::Multi => Scalar::Text(text),
        Ty::Number => Scalar::Number(text.trim().parse().ok()?),
        Ty::Id => Scalar::Id(text.trim().parse().ok()?),
        Ty::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "true" => Scalar::Bool(true),
            "false" => Scalar::Bool(false),
            _ => return None,
        },
        Ty::Time => Scalar::Time(parse_time(&text)?),
        Ty::Date => Scalar::Date(parse_date(&text)?),
    })
}

/// Which comparisons a column type allows.
pub fn allowed(ty: Ty, cmp: Cmp, is_record_id: bool) -> bool {
    use Cmp::*;
    match cmp {
        Eq | Ne | In | NotIn | IsNull | IsNotNull => true,
        Gt | Ge | Lt | Le | Between => {
            matches!(ty, Ty::Number | Ty::Time | Ty::Date) || is_record_id
        }
        StartsWith | Like | NotLike => ty == Ty::Text,
    }
}

/// The condition for `name cmp literals`, or the reason it is not one.
pub fn condition(
    module: Module,
    name: &str,
    cmp: Cmp,
    literals: &[Literal],
) -> Result<Cond, ApiError> {
    let path = resolve(module, name).ok_or_else(|| {
        ApiError::bad_request("INVALID_QUERY", "invalid column").with_details(
            json!({"column_name": name, "reason": "column given seems to be invalid"}),
        )
    })?;
    let ty = path_ty(module, path);
    if !allowed(ty, cmp, path == Path::Column(Column::Id)) {
        return Err(ApiError::bad_request("INVALID_QUERY", "invalid operator found").with_details(
            json!({"column_name": name, "operator": cmp.symbol(), "reason": "invalid operator found"}),
        ));
    }
    let operands = literals
        .iter()
        .map(|l| {
            typed(ty, l).ok_or_else(|| {
                ApiError::bad_request("INVALID_QUERY", "invalid value for the column").with_details(
                    json!({"column_name": name, "value": l.text(), "operator": cmp.symbol(), "reason": "invalid value given for the column"}),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Cond {
        path,
        cmp,
        operands,
    })
}

fn column_scalar(module: Module, record: &Record, column: Column) -> Scalar {
    match column {
        Column::Id => Scalar::Id(record.id),
        Column::Owner => Scalar::Id(record.owner),
        Column::CreatedBy => Scalar::Id(record.created_by),
        Column::ModifiedBy => Scalar::Id(record.modified_by),
        Column::CreatedTime => Scalar::Time(record.created),
        Column::ModifiedTime => Scalar::Time(record.modified),
        Column::Field(i) => {
            let field = module.field(i);
            if field.kind == Kind::Computed {
                return match field.name {
                    "Full_Name" => full_name(
                        record.text(module, "First_Name"),
                        record.text(module, "Last_Name"),
                    )
                    .map_or(Scalar::Null, Scalar::Text),
                    _ => record
                        .text(module, "Call_Duration")
                        .and_then(super::render::duration_seconds)
                        .map_or(Scalar::Null, |s| Scalar::Number(s as f64)),
                };
            }
            match record.value(i) {
                None => Scalar::Null,
                Some(Value::Text(s)) => Scalar::Text(s.clone()),
                Some(Value::Int(n)) => Scalar::Number(*n as f64),
                Some(Value::Decimal(x)) => Scalar::Number(*x),
                Some(Value::Bool(b)) => Scalar::Bool(*b),
                Some(Value::Date(d)) => Scalar::Date(*d),
                Some(Value::DateTime(t)) => Scalar::Time(*t),
                Some(Value::Lookup(id)) | Some(Value::ModuleLookup(_, id)) => Scalar::Id(*id),
                Some(Value::Multi(items)) => Scalar::Multi(items.clone()),
            }
        }
    }
}

/// The value at `path` of a record.
pub fn scalar(store: &Store, module: Module, record: &Record, path: Path) -> Scalar {
    match path {
        Path::Column(c) => column_scalar(module, record, c),
        Path::UserId(c) => column_scalar(module, record, c),
        Path::Through(i, target, c) => match record.value(i) {
            Some(Value::Lookup(id)) => store
                .record(target, *id)
                .map_or(Scalar::Null, |r| column_scalar(target, r, c)),
            _ => Scalar::Null,
        },
    }
}

/// Orders two values of one column; nulls first.
pub fn order(a: &Scalar, b: &Scalar) -> Ordering {
    use Scalar::*;
    match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Null, _) => Ordering::Less,
        (_, Null) => Ordering::Greater,
        (Text(x), Text(y)) => x.to_lowercase().cmp(&y.to_lowercase()),
        (Number(x), Number(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Id(x), Id(y)) => x.cmp(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        (Time(x), Time(y)) => x.cmp(y),
        (Date(x), Date(y)) => x.cmp(y),
        (Multi(x), Multi(y)) => x.join(";").to_lowercase().cmp(&y.join(";").to_lowercase()),
        _ => Ordering::Equal,
    }
}

fn equals(value: &Scalar, operand: &Scalar) -> bool {
    match (value, operand) {
        (Scalar::Null, _) | (_, Scalar::Null) => false,
        (Scalar::Multi(items), Scalar::Text(t)) => items.iter().any(|i| i.eq_ignore_ascii_case(t)),
        (v, o) => order(v, o) == Ordering::Equal,
    }
}

/// SQL `LIKE` with `%` wildcards, without regard to case.
pub fn like(text: &str, pattern: &str) -> bool {
    let text = text.to_lowercase();
    let pattern = pattern.to_lowercase();
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return text == pattern;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

fn holds(cond: &Cond, value: &Scalar) -> bool {
    let first = cond.operands.first().unwrap_or(&Scalar::Null);
    let is_null = *value == Scalar::Null;
    let text = match value {
        Scalar::Text(t) => Some(t.as_str()),
        _ => None,
    };
    let pattern = match first {
        Scalar::Text(p) => p.as_str(),
        _ => "",
    };
    match cond.cmp {
        Cmp::IsNull => is_null,
        Cmp::IsNotNull => !is_null,
        Cmp::Eq => equals(value, first),
        Cmp::Ne => !is_null && !equals(value, first),
        Cmp::In => cond.operands.iter().any(|o| equals(value, o)),
        Cmp::NotIn => !is_null && !cond.operands.iter().any(|o| equals(value, o)),
        Cmp::Gt => !is_null && order(value, first) == Ordering::Greater,
        Cmp::Ge => !is_null && order(value, first) != Ordering::Less,
        Cmp::Lt => !is_null && order(value, first) == Ordering::Less,
        Cmp::Le => !is_null && order(value, first) != Ordering::Greater,
        Cmp::Between => {
            let hi = cond.operands.get(1).unwrap_or(&Scalar::Null);
            !is_null
                && order(value, first) != Ordering::Less
                && order(value, hi) != Ordering::Greater
        }
        Cmp::StartsWith => {
            text.is_some_and(|t| t.to_lowercase().starts_with(&pattern.to_lowercase()))
        }
        Cmp::Like => text.is_some_and(|t| like(t, pattern)),
        Cmp::NotLike => text.is_some_and(|t| !like(t, pattern)),
    }
}

pub fn matches(expr: &Expr, store: &Store, module: Module, record: &Record) -> bool {
    match expr {
        Expr::Cond(c) => holds(c, &scalar(store, module, record, c.path)),
        Expr::And(a, b) => matches(a, store, module, record) && matches(b, store, module, record),
        Expr::Or(a, b) => matches(a, store, module, record) || matches(b, store, module, record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_as_sql_does() {
        for (text, pattern, expected) in [
            ("Hopper", "Hop%", true),
            ("Hopper", "%PER", true),
            ("Hopper", "%opp%", true),
            ("Hopper", "H%p%r", true),
            ("Hopper", "H%x%r", false),
            ("Hopper", "hopper", true),
            ("Hopper", "Hop", false),
            ("ab", "a%b%", true),
            ("a", "a%a", false),
        ] {
            assert_eq!(like(text, pattern), expected, "{text} like {pattern}");
        }
    }

    #[test]
    fn paths_resolve_through_lookups_and_users() {
        let m = Module::Contacts;
        assert_eq!(resolve(m, "id"), Some(Path::Column(Column::Id)));
        assert!(matches!(
            resolve(m, "Account_Name.Industry"),
            Some(Path::Through(_, Module::Accounts, Column::Field(_)))
        ));
        assert_eq!(resolve(m, "Owner.id"), Some(Path::UserId(Column::Owner)));
        assert_eq!(resolve(m, "Email.id"), None);
        assert_eq!(resolve(m, "Nope"), None);
        assert!(allowed(Ty::Time, Cmp::Gt, false));
        assert!(!allowed(Ty::Text, Cmp::Gt, false));
        assert!(allowed(Ty::Id, Cmp::Gt, true));
        assert_eq!(
            typed(Ty::Time, &Literal::Str("2024-05-01T10:00:00+05:30".into())),
            Some(Scalar::Time(1_714_537_800_000))
        );
        assert_eq!(typed(Ty::Number, &Literal::Str("x".into())), None);
    }
}
