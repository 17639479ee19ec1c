//! `GET /crm/v8/{Module}/search` with one of `criteria`
//! (`((Last_Name:equals:Burns\,B)and(Email:starts_with:b))`), `email`, `phone` or
//! `word`. Operators `equals`, `not_equal`, `starts_with`, `in`, `between`,
//! `greater_than`, `greater_equal`, `less_than`, `less_equal`; `\(`, `\)` and `\,`
//! escape; at most 10 conditions. Search reaches the first 2,000 matches by `page`,
//! like the list API, and has no page token. `fields` is optional here.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value as Json};

use super::auth::{Caller, Op};
use super::error::ApiError;
use super::filter::{condition, matches, Cmp, Expr, Literal};
use super::paging::DISCRETE_LIMIT;
use super::records::{columns, module_of, page, param, per_page, Params};
use super::render::record_json;
use super::schema::{Kind, Module};
use super::store::{Record, Store, Value};
use super::ZohoSandbox;

const MAX_CONDITIONS: usize = 10;
/// How deeply groups may nest; criteria come from clients and are parsed recursively.
const MAX_DEPTH: usize = 64;

fn invalid(reason: &str) -> ApiError {
    ApiError::bad_request("INVALID_QUERY", "Invalid query formed")
        .with_details(json!({"reason": reason}))
}

fn too_many_conditions() -> ApiError {
    ApiError::bad_request("LIMIT_EXCEEDED", "criteria limit exceeded")
        .with_details(json!({"limit": MAX_CONDITIONS, "param_name": "criteria"}))
}

struct Parser<'a> {
    module: Module,
    src: &'a [u8],
    text: &'a str,
    at: usize,
    depth: usize,
    conditions: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.at).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), ApiError> {
        if self.peek() == Some(b) {
            self.at += 1;
            Ok(())
        } else {
            Err(invalid("invalid criteria"))
        }
    }

    /// groups joined by `and` / `or`; `and` binds tighter.
    fn sequence(&mut self) -> Result<Expr, ApiError> {
        let mut terms = vec![self.group()?];
        let mut ors = Vec::new();
        loop {
            let rest = &self.text[self.at..];
            let lower = rest.get(..3).map(str::to_ascii_lowercase);
            if lower.as_deref() == Some("and") {
                self.at += 3;
                let right = self.group()?;
                let left = terms.pop().ok_or_else(|| invalid("invalid criteria"))?;
                terms.push(Expr::And(Box::new(left), Box::new(right)));
            } else if rest.get(..2).map(str::to_ascii_lowercase).as_deref() == Some("or") {
                self.at += 2;
                ors.append(&mut terms);
                terms.push(self.group()?);
            } else {
                break;
            }
        }
        ors.append(&mut terms);
        let mut iter = ors.into_iter();
        let first = iter.next().ok_or_else(|| invalid("invalid criteria"))?;
        Ok(iter.fold(first, |acc, e| Expr::Or(Box::new(acc), Box::new(e))))
    }

    fn group(&mut self) -> Result<Expr, ApiError> {
        self.expect(b'(')?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(
                ApiError::bad_request("LIMIT_EXCEEDED", "criteria nested too deeply")
                    .with_details(json!({"limit": MAX_DEPTH, "param_name": "criteria"})),
            );
        }
        let expr = if self.peek() == Some(b'(') {
            self.sequence()?
        } else {
            self.condition()?
        };
        self.expect(b')')?;
        self.depth -= 1;
        Ok(expr)
    }

    /// `field:operator:value` up to the unescaped `)`.
    fn condition(&mut self) -> Result<Expr, ApiError> {
        // Counted as they are read, so a long run of groups never builds a deep tree.
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(too_many_conditions());
        }
        let start = self.at;
        while let Some(b) = self.peek() {
            match b {
                b'\\' => self.at += 2,
                b')' => break,
                _ => self.at += 1,
            }
        }
        let raw = self
            .text
            .get(start..self.at.min(self.src.len()))
            .unwrap_or_default();
        let mut parts = raw.splitn(3, ':');
        let (Some(field), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("invalid criteria"));
        };
        let cmp = match op.trim() {
            "equals" => Cmp::Eq,
            "not_equal" => Cmp::Ne,
            "starts_with" => Cmp::StartsWith,
            "in" => Cmp::In,
            "between" => Cmp::Between,
            "greater_than" => Cmp::Gt,
            "greater_equal" => Cmp::Ge,
            "less_than" => Cmp::Lt,
            "less_equal" => Cmp::Le,
            other => {
                return Err(
                    ApiError::bad_request("INVALID_QUERY", "Invalid query formed").with_details(
                        json!({"reason": "invalid operator found", "operator": other}),
                    ),
                )
            }
        };
        let values = split_values(value, matches!(cmp, Cmp::In | Cmp::Between));
        if cmp == Cmp::Between && values.len() != 2 {
            return Err(invalid("between needs two values"));
        }
        let literals: Vec<Literal> = values
            .into_iter()
            .map(|v| {
                if v == "null" {
                    Literal::Null
                } else {
                    Literal::Str(v)
                }
            })
            .collect();
        condition(self.module, field.trim(), cmp, &literals).map(Expr::Cond)
    }
}

/// Unescapes a criteria value; for `in` and `between`, splits it at unescaped commas.
fn split_values(raw: &str, split: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ',' if split => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out
}

/// Parses search criteria for `module`.
pub fn criteria(module: Module, text: &str) -> Result<Expr, ApiError> {
    let text = text.trim();
    let mut p = Parser {
        module,
        src: text.as_bytes(),
        text,
        at: 0,
        depth: 0,
        conditions: 0,
    };
    let expr = p.sequence()?;
    if p.at != text.len() {
        return Err(invalid("invalid criteria"));
    }
    Ok(expr)
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// What a search looks for.
enum Wanted {
    Criteria(Expr),
    /// An address in any email field.
    Email(String),
    /// Digits within any phone field.
    Phone(String),
    /// A word within any text field.
    Word(String),
}

/// The layout fields of the given kinds (picklists count as text).
fn fields_of(module: Module, kinds: &[Kind]) -> Vec<usize> {
    module
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            kinds.contains(&f.kind)
                || (kinds.contains(&Kind::Text) && matches!(f.kind, Kind::Picklist(..)))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Whether `r` is a hit; `fields` are the fields an email, phone or word search reads.
fn found(store: &Store, module: Module, r: &Record, wanted: &Wanted, fields: &[usize]) -> bool {
    let any = |test: &dyn Fn(&str) -> bool| {
        fields
            .iter()
            .any(|i| matches!(r.value(*i), Some(Value::Text(s)) if test(s)))
    };
    match wanted {
        Wanted::Criteria(e) => matches(e, store, module, r),
        Wanted::Email(e) => any(&|s| s.eq_ignore_ascii_case(e)),
        Wanted::Phone(p) => any(&|s| digits(s).contains(p.as_str())),
        Wanted::Word(w) => any(&|s| s.to_lowercase().contains(w.as_str())),
    }
}

/// `GET /crm/v8/{Module}/search`.
pub async fn search(
    State(sb): State<Arc<ZohoSandbox>>,
    Extension(caller): Extension<Caller>,
    Path((_dc, module)): Path<(String, String)>,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let module = module_of(&module)?;
    caller.require_module(module, Op::Read)?;
    let query = if let Some(c) = param(&q, "criteria") {
        Wanted::Criteria(criteria(module, c)?)
    } else if let Some(e) = param(&q, "email") {
        Wanted::Email(e.to_owned())
    } else if let Some(p) = param(&q, "phone") {
        let d = digits(p);
        if d.len() < 3 {
            return Err(ApiError::invalid_param(
                "phone",
                "the phone number is too short",
            ));
        }
        Wanted::Phone(d)
    } else if let Some(w) = param(&q, "word") {
        if w.chars().count() < 2 {
            return Err(ApiError::invalid_param("word", "the word is too short"));
        }
        Wanted::Word(w.to_lowercase())
    } else {
        return Err(ApiError::required_param("criteria"));
    };
    let cols = match param(&q, "fields") {
        Some(f) => columns(module, f)?,
        None => module.all_columns(),
    };
    let per_page = per_page(&q)?;
    let page = page(&q)?;
    if page.saturating_mul(per_page) > DISCRETE_LIMIT {
        return Err(ApiError::bad_request(
            "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
            "You can only get the first 2000 records of a search",
        )
        .with_details(json!({"limit": DISCRETE_LIMIT})));
    }
    let fields = match &query {
        Wanted::Criteria(_) => Vec::new(),
        Wanted::Email(_) => fields_of(module, &[Kind::Email]),
        Wanted::Phone(_) => fields_of(module, &[Kind::Phone]),
        Wanted::Word(_) => fields_of(module, &[Kind::Text, Kind::Email, Kind::TextArea]),
    };
    let store = sb.store();
    let hits: Vec<&Record> = store
        .table(module)
        .records
        .values()
        .rev()
        .filter(|r| found(&store, module, r, &query, &fields))
        .take(DISCRETE_LIMIT + 1)
        .collect();
    let from = ((page - 1) * per_page).min(hits.len());
    let to = (from + per_page).min(hits.len()).min(DISCRETE_LIMIT);
    if from >= to {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let data: Vec<Json> = hits[from..to]
        .iter()
        .map(|r| record_json(&store, module, r, &cols))
        .collect();
    Ok(axum::Json(json!({
        "data": data,
        "info": {"per_page": per_page, "count": to - from, "page": page, "more_records": to < hits.len().min(DISCRETE_LIMIT)},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoho::filter::Scalar;

    #[test]
    fn criteria_parse_nested_groups_and_escapes() {
        let m = Module::Contacts;
        let e = criteria(
            m,
            "((Last_Name:equals:Burns\\,B)and(First_Name:starts_with:M))",
        )
        .unwrap();
        let Expr::And(left, _) = &e else {
            panic!("{e:?}")
        };
        let Expr::Cond(c) = left.as_ref() else {
            panic!("{left:?}")
        };
        assert_eq!(c.operands, vec![Scalar::Text("Burns,B".into())]);
        assert!(matches!(
            criteria(m, "(Email:equals:a@b.c)or(Phone:equals:1)"),
            Ok(Expr::Or(..))
        ));
        assert!(
            matches!(criteria(m, "(Email:in:a@b.c,d@e.f)"), Ok(Expr::Cond(c)) if c.operands.len() == 2)
        );
        assert!(criteria(m, "(Modified_Time:greater_than:2024-05-01T10:00:00+05:30)").is_ok());
        for bad in [
            "Email:equals:x",
            "(Email:equals:x",
            "(Email:approx:x)",
            "(Nope:equals:x)",
            "(Last_Name:greater_than:x)",
            "(Modified_Time:greater_than:yesterday)",
            "(Email:equals:x)xor(Email:equals:y)",
        ] {
            assert!(criteria(m, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deeply_nested_or_endless_criteria_get_a_clean_error() {
        let m = Module::Contacts;
        let n = 100_000;
        let nested = format!("{}Email:equals:x{}", "(".repeat(n), ")".repeat(n));
        let err = criteria(m, &nested).unwrap_err();
        assert_eq!(err.code, "LIMIT_EXCEEDED");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let unclosed = "(".repeat(n);
        assert_eq!(criteria(m, &unclosed).unwrap_err().code, "LIMIT_EXCEEDED");
        let endless = vec!["(Email:equals:x)"; n].join("or");
        assert_eq!(criteria(m, &endless).unwrap_err().code, "LIMIT_EXCEEDED");
        let ten = ["(Email:equals:x)"; 10].join("and");
        assert!(criteria(m, &ten).is_ok());
        let nested_ok = format!(
            "{}Email:equals:x{}",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        assert!(criteria(m, &nested_ok).is_ok());
    }
}
