//! COQL's SELECT, as far as a sync engine needs it:
//!
//! `select f1, f2 from Module [where <cond>] [order by f [asc|desc], ...]
//! [limit [offset,] n | limit n offset m]`
//!
//! Conditions: `= != <> > >= < <=`, `[not] like`, `[not] in (...)`, `between a and
//! b`, `is [not] null`, on fields or `Lookup.Field`. As in Zoho, one level of
//! parentheses joins at most two conditions (`(a and b) or c`, never `a and b or c`),
//! a WHERE clause holds at most 25 conditions, a query selects at most 50 fields (no
//! `*`), LIMIT defaults to 200 and is at most 2,000, OFFSET at most 100,000.
//! Aggregates, aliases, joins beyond one lookup hop and subqueries are not emulated.

use serde_json::json;

use super::lexer::{syntax_error, tokens, Tok};
use crate::zoho::error::ApiError;
use crate::zoho::filter::{condition, resolve, Cmp, Expr, Literal, Path};
use crate::zoho::schema::Module;

pub const MAX_LIMIT: usize = 2_000;
pub const MAX_OFFSET: usize = 100_000;
const DEFAULT_LIMIT: usize = 200;
const MAX_FIELDS: usize = 50;
const MAX_CONDITIONS: usize = 25;
/// How deeply parentheses may nest in WHERE; the parser recurses on them.
const MAX_DEPTH: usize = 64;

const KEYWORDS: &[&str] = &[
    "select", "from", "where", "and", "or", "not", "like", "in", "is", "null", "order", "by",
    "asc", "desc", "limit", "offset", "between",
];

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub module: Module,
    pub select: Vec<(String, Path)>,
    pub filter: Option<Expr>,
    pub order: Vec<(Path, bool)>,
    pub limit: usize,
    pub offset: usize,
}

struct P {
    toks: Vec<Tok>,
    at: usize,
    module: Module,
    depth: usize,
}

fn invalid_column(name: &str, clause: &str) -> ApiError {
    ApiError::bad_request("INVALID_QUERY", "column given seems to be invalid")
        .with_details(json!({"column_name": name, "clause": clause}))
}

fn limit_exceeded(clause: &str, limit: usize) -> ApiError {
    ApiError::bad_request(
        "LIMIT_EXCEEDED",
        format!("{clause} exceeds the maximum of {limit}"),
    )
    .with_details(json!({"clause": clause, "limit": limit}))
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn near(&self) -> String {
        self.peek().map_or_else(|| "end of query".into(), Tok::text)
    }

    fn kw(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_kw(kw)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), ApiError> {
        if self.kw(kw) {
            Ok(())
        } else {
            Err(syntax_error(&self.near()))
        }
    }

    fn name(&mut self) -> Result<String, ApiError> {
        match self.peek() {
            Some(Tok::Word(w)) if !KEYWORDS.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                let w = w.clone();
                self.at += 1;
                Ok(w)
            }
            _ => Err(syntax_error(&self.near())),
        }
    }

    fn number(&mut self, clause: &str) -> Result<usize, ApiError> {
        match self.bump() {
            Some(Tok::Num(n)) => n.parse().map_err(|_| {
                ApiError::bad_request(
                    "INVALID_QUERY",
                    format!("{clause} given seems to be invalid"),
                )
                .with_details(json!({ clause: n }))
            }),
            Some(other) => Err(ApiError::bad_request(
                "INVALID_QUERY",
                format!("{clause} given seems to be invalid"),
            )
            .with_details(json!({ clause: other.text() }))),
            None => Err(syntax_error("end of query")),
        }
    }

    fn literal(&mut self) -> Result<Literal, ApiError> {
        match self.bump() {
            Some(Tok::Str(s)) => Ok(Literal::Str(s)),
            Some(Tok::Num(n)) => Ok(Literal::Num(n)),
            Some(t) if t.is_kw("null") => Ok(Literal::Null),
            Some(t) if t.is_kw("true") => Ok(Literal::Bool(true)),
            Some(t) if t.is_kw("false") => Ok(Literal::Bool(false)),
            Some(t) => Err(syntax_error(&t.text())),
            None => Err(syntax_error("end of query")),
        }
    }

    fn list(&mut self) -> Result<Vec<Literal>, ApiError> {
        if self.bump() != Some(Tok::LParen) {
            return Err(syntax_error(&self.near()));
        }
        let mut out = vec![self.literal()?];
        while self.peek() == Some(&Tok::Comma) {
            self.at += 1;
            out.push(self.literal()?);
        }
        if self.bump() != Some(Tok::RParen) {
            return Err(syntax_error(&self.near()));
        }
        Ok(out)
    }

    fn condition(&mut self) -> Result<Expr, ApiError> {
        let name = self.name()?;
        let (cmp, literals) = match self.bump() {
            Some(Tok::Op(op)) => {
                let cmp = match op {
                    "=" => Cmp::Eq,
                    "!=" => Cmp::Ne,
                    ">" => Cmp::Gt,
                    ">=" => Cmp::Ge,
                    "<" => Cmp::Lt,
                    _ => Cmp::Le,
                };
                (cmp, vec![self.literal()?])
            }
            Some(t) if t.is_kw("like") => (Cmp::Like, vec![self.literal()?]),
            Some(t) if t.is_kw("in") => (Cmp::In, self.list()?),
            Some(t) if t.is_kw("between") => {
                let lo = self.literal()?;
                self.expect_kw("and")?;
                (Cmp::Between, vec![lo, self.literal()?])
            }
            Some(t) if t.is_kw("not") => {
                if self.kw("like") {
                    (Cmp::NotLike, vec![self.literal()?])
                } else if self.kw("in") {
                    (Cmp::NotIn, self.list()?)
                } else {
                    return Err(syntax_error(&self.near()));
                }
            }
            Some(t) if t.is_kw("is") => {
                let cmp = if self.kw("not") {
                    Cmp::IsNotNull
                } else {
                    Cmp::IsNull
                };
                self.expect_kw("null")?;
                (cmp, Vec::new())
            }
            Some(t) => return Err(syntax_error(&t.text())),
            None => return Err(syntax_error("end of query")),
        };
        condition(self.module, &name, cmp, &literals).map(Expr::Cond)
    }

    fn term(&mut self) -> Result<Expr, ApiError> {
        if self.peek() == Some(&Tok::LParen) {
            self.at += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(ApiError::bad_request(
                    "LIMIT_EXCEEDED",
                    "where clause nested too deeply",
                )
                .with_details(json!({"clause": "where", "limit": MAX_DEPTH})));
            }
            let e = self.expr()?;
            if self.bump() != Some(Tok::RParen) {
                return Err(syntax_error(&self.near()));
            }
            self.depth -= 1;
            Ok(e)
        } else {
            self.condition()
        }
    }

    /// At most two terms at one level.
    fn expr(&mut self) -> Result<Expr, ApiError> {
        let left = self.term()?;
        let join: fn(Box<Expr>, Box<Expr>) -> Expr = if self.kw("and") {
            Expr::And
        } else if self.kw("or") {
            Expr::Or
        } else {
            return Ok(left);
        };
        let right = self.term()?;
        if self.peek().is_some_and(|t| t.is_kw("and") || t.is_kw("or")) {
            return Err(syntax_error(&self.near()));
        }
        Ok(join(Box::new(left), Box::new(right)))
    }
}

pub fn parse(src: &str) -> Result<Query, ApiError> {
    let toks = tokens(src)?;
    let mut p = P {
        toks,
        at: 0,
        module: Module::Contacts,
        depth: 0,
    };
    p.expect_kw("select")?;
    let mut names = Vec::new();
    loop {
        if p.peek() == Some(&Tok::Star) {
            return Err(syntax_error("*"));
        }
        let name = p.name()?;
        if p.peek() == Some(&Tok::LParen) {
            return Err(
                ApiError::bad_request("INVALID_QUERY", "unsupported function").with_details(
                    json!({"column_name": name, "reason": "aggregate functions are not emulated"}),
                ),
            );
        }
        names.push(name);
        if p.peek() != Some(&Tok::Comma) {
            break;
        }
        p.at += 1;
    }
    p.expect_kw("from")?;
    let module_name = p.name()?;
    p.module = Module::parse(&module_name).ok_or_else(|| {
        ApiError::bad_request(
            "INVALID_MODULE",
            "the module name given seems to be invalid",
        )
        .with_details(json!({"module": module_name}))
    })?;
    if names.len() > MAX_FIELDS {
        return Err(limit_exceeded("select", MAX_FIELDS));
    }
    let mut select = Vec::with_capacity(names.len());
    for name in names {
        let path = resolve(p.module, &name).ok_or_else(|| invalid_column(&name, "select"))?;
        if select.iter().any(|(n, _)| *n == name) {
            return Err(
                ApiError::bad_request("DUPLICATE_DATA", "duplicate column found")
                    .with_details(json!({"column_name": name})),
            );
        }
        select.push((name, path));
    }
    let filter = if p.kw("where") {
        let e = p.expr()?;
        if e.count() > MAX_CONDITIONS {
            return Err(limit_exceeded("where", MAX_CONDITIONS));
        }
        Some(e)
    } else {
        None
    };
    let mut order = Vec::new();
    if p.kw("order") {
        p.expect_kw("by")?;
        loop {
            let name = p.name()?;
            let path = resolve(p.module, &name).ok_or_else(|| invalid_column(&name, "order by"))?;
            let desc = if p.kw("desc") {
                true
            } else {
                p.kw("asc");
                false
            };
            order.push((path, desc));
            if p.peek() != Some(&Tok::Comma) {
                break;
            }
            p.at += 1;
        }
    }
    let (mut limit, mut offset) = (DEFAULT_LIMIT, 0);
    if p.kw("limit") {
        let first = p.number("limit")?;
        if p.peek() == Some(&Tok::Comma) {
            p.at += 1;
            offset = first;
            limit = p.number("limit")?;
        } else {
            limit = first;
            if p.kw("offset") {
                offset = p.number("offset")?;
            }
        }
    }
    if p.peek().is_some() {
        return Err(syntax_error(&p.near()));
    }
    if limit == 0 {
        return Err(
            ApiError::bad_request("INVALID_DATA", "limit should be greater than zero")
                .with_details(json!({"clause": "limit"})),
        );
    }
    if limit > MAX_LIMIT {
        return Err(limit_exceeded("limit", MAX_LIMIT));
    }
    if offset > MAX_OFFSET {
        return Err(limit_exceeded("offset", MAX_OFFSET));
    }
    Ok(Query {
        module: p.module,
        select,
        filter,
        order,
        limit,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supported_subset_parses() {
        let q = parse(
            "SELECT Last_Name, Email, Account_Name.Account_Name FROM Contacts \
             WHERE (Modified_Time > '2024-05-01T10:00:00+05:30' and Email is not null) or Last_Name like 'Hop%' \
             ORDER BY Modified_Time ASC, id DESC LIMIT 100, 50",
        )
        .unwrap();
        assert_eq!(q.module, Module::Contacts);
        assert_eq!(q.select.len(), 3);
        assert!(matches!(q.filter, Some(Expr::Or(..))));
        assert_eq!(q.order.len(), 2);
        assert_eq!((q.offset, q.limit), (100, 50));
        let q = parse(
            "select id from Deals where Stage in ('Closed Won', 'Closed Lost') limit 10 offset 20",
        )
        .unwrap();
        assert_eq!((q.offset, q.limit), (20, 10));
        assert_eq!(parse("select Deal_Name from Deals").unwrap().limit, 200);
        assert!(parse("select Deal_Name from Deals where Amount between 10 and 20").is_ok());
    }

    #[test]
    fn errors_carry_zohos_codes() {
        for (q, code) in [
            ("select * from Contacts", "SYNTAX_ERROR"),
            ("select Last_Name Contacts", "SYNTAX_ERROR"),
            ("select Last_Name from Contacts where Last_Name = 'a' and Email = 'b' and Phone = 'c'", "SYNTAX_ERROR"),
            ("select Last_Name from Contacts limit 2001", "LIMIT_EXCEEDED"),
            ("select Last_Name from Contacts limit 100001, 10", "LIMIT_EXCEEDED"),
            ("select Last_Name from Contacts limit 0", "INVALID_DATA"),
            ("select Last_Name from Contacts limit ten", "INVALID_QUERY"),
            ("select Nope from Contacts", "INVALID_QUERY"),
            ("select Last_Name from Contacts where Last_Name > 'x'", "INVALID_QUERY"),
            ("select Last_Name from Widgets", "INVALID_MODULE"),
            ("select Last_Name, Last_Name from Contacts", "DUPLICATE_DATA"),
            ("select count(id) from Contacts", "INVALID_QUERY"),
        ] {
            assert_eq!(parse(q).unwrap_err().code, code, "{q}");
        }
    }

    #[test]
    fn deeply_nested_where_clauses_get_a_clean_error() {
        let n = 100_000;
        let q = format!(
            "select Last_Name from Contacts where {}Last_Name = 'a'{}",
            "(".repeat(n),
            ")".repeat(n)
        );
        let err = parse(&q).unwrap_err();
        assert_eq!(err.code, "LIMIT_EXCEEDED");
        assert_eq!(err.details["clause"], "where");
        let q = format!("select Last_Name from Contacts where {}", "(".repeat(n));
        assert_eq!(parse(&q).unwrap_err().code, "LIMIT_EXCEEDED");
        let q = format!(
            "select Last_Name from Contacts where {}Last_Name = 'a'{} limit 5",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        assert_eq!(parse(&q).unwrap().limit, 5);
    }
}
