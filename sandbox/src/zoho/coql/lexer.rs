//! COQL tokens: identifiers (keywords among them, matched without regard to case;
//! dotted names such as `Account_Name.Industry`), `'quoted'` strings with `\'`
//! escapes, numbers, `( ) , *` and the comparison operators.

use serde_json::json;

use crate::zoho::error::ApiError;

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Word(String),
    Str(String),
    Num(String),
    LParen,
    RParen,
    Comma,
    Star,
    Op(&'static str),
}

impl Tok {
    pub fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    pub fn text(&self) -> String {
        match self {
            Tok::Word(s) | Tok::Num(s) => s.clone(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Comma => ",".into(),
            Tok::Star => "*".into(),
            Tok::Op(o) => (*o).into(),
        }
    }
}

pub fn syntax_error(near: &str) -> ApiError {
    ApiError::bad_request("SYNTAX_ERROR", "error occured while parsing the query")
        .with_details(json!({ "near": near }))
}

pub fn tokens(src: &str) -> Result<Vec<Tok>, ApiError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let near = || chars[i..].iter().take(20).collect::<String>();
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '*' => {
                out.push(Tok::Star);
                i += 1;
            }
            '=' => {
                out.push(Tok::Op("="));
                i += 1;
            }
            '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('!', Some('=')) => ("!=", 2),
                    ('<', Some('>')) => ("!=", 2),
                    ('<', Some('=')) => ("<=", 2),
                    ('>', Some('=')) => (">=", 2),
                    ('<', _) => ("<", 1),
                    ('>', _) => (">", 1),
                    _ => return Err(syntax_error(&near())),
                };
                out.push(Tok::Op(op));
                i += len;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(syntax_error("'")),
                        Some('\\') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let start = i;
                i += 1;
                while chars
                    .get(i)
                    .is_some_and(|ch| ch.is_ascii_digit() || *ch == '.')
                {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|ch| ch.is_alphanumeric() || matches!(ch, '_' | '$' | '.'))
                {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            _ => return Err(syntax_error(&near())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_split_into_tokens() {
        let t = tokens("select Last_Name from Contacts where (Email != 'o\\'hara@x.io' and Amount >= -1.5) limit 10, 5").unwrap();
        assert_eq!(t[0], Tok::Word("select".into()));
        assert!(t.contains(&Tok::Str("o'hara@x.io".into())));
        assert!(t.contains(&Tok::Op(">=")));
        assert!(t.contains(&Tok::Num("-1.5".into())));
        assert_eq!(t.last(), Some(&Tok::Num("5".into())));
        assert!(tokens("select a from b where c = 'open").is_err());
        assert!(tokens("select a from b where c ~ 1").is_err());
    }
}
