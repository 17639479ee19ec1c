//! NATS subjects and the escaping of the ids inside them.
//!
//! CRM ids and workspace ids may hold `.`, `*`, `>`, spaces or any other character,
//! and a subject token may hold none of those. [`escape_token`] keeps ASCII letters,
//! digits, `-` and `_` and writes every other byte of the UTF-8 text as `%XX`
//! (upper-case hex). The empty string becomes a lone `%`, which no other input can
//! produce, so every text maps to exactly one non-empty token without wildcards, and
//! [`unescape_token`] gives it back.

use std::fmt::Write as _;

use crate::ids::{IdError, ObjectType, Provider, RemoteId, WorkspaceId};

/// Why a subject or token could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject token `{0}` is not a valid escaped token")]
    BadToken(String),
    #[error("subject `{0}` is not a raw event subject under this root")]
    NotRaw(String),
    #[error("subject prefix `{0}` must be one or more tokens of letters, digits, `-` and `_`")]
    BadPrefix(String),
    #[error(transparent)]
    Id(#[from] IdError),
}

fn keeps(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Escapes any text into one valid NATS subject token.
pub fn escape_token(s: &str) -> String {
    if s.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if keeps(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Reverses [`escape_token`]. Refuses anything `escape_token` cannot have produced.
pub fn unescape_token(token: &str) -> Result<String, SubjectError> {
    let bad = || SubjectError::BadToken(token.chars().take(300).collect());
    if token == "%" {
        return Ok(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                if !hex
                    .iter()
                    .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h))
                {
                    return Err(bad());
                }
                let v = u8::from_str_radix(std::str::from_utf8(hex).map_err(|_| bad())?, 16)
                    .map_err(|_| bad())?;
                if keeps(v) {
                    // Only one spelling per text: a kept byte is never escaped.
                    return Err(bad());
                }
                out.push(v);
                i += 3;
            }
            b if keeps(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(bad()),
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The parts of a raw event subject `crm.raw.<provider>.<ws>.<object>.<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSubject {
    pub provider: Provider,
    pub workspace: WorkspaceId,
    pub object: ObjectType,
    pub id: RemoteId,
}

/// Builds and reads the subjects of one crmsync installation.
///
/// The root is `crm`, or `<prefix>.crm` when several installations (or tests) share
/// one NATS account.
///
/// ```
/// use crmsync_schema::{Subjects, Provider, WorkspaceId, ObjectType, RemoteId};
/// let s = Subjects::new(None).unwrap();
/// let subject = s.raw(
///     Provider::HubSpot,
///     &WorkspaceId::parse("62515").unwrap(),
///     &ObjectType::contact(),
///     &RemoteId::parse("a.b").unwrap(),
/// );
/// assert_eq!(subject, "crm.raw.hubspot.62515.contact.a%2Eb");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    root: String,
}

impl Subjects {
    pub fn new(prefix: Option<&str>) -> Result<Self, SubjectError> {
        let root = match prefix {
            None | Some("") => "crm".to_owned(),
            Some(p) => {
                let ok = p.split('.').all(|t| !t.is_empty() && t.bytes().all(keeps));
                if !ok {
                    return Err(SubjectError::BadPrefix(p.chars().take(64).collect()));
                }
                format!("{p}.crm")
            }
        };
        Ok(Self { root })
    }

    /// `crm` or `<prefix>.crm`.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn raw(
        &self,
        provider: Provider,
        ws: &WorkspaceId,
        object: &ObjectType,
        id: &RemoteId,
    ) -> String {
        format!(
            "{}.raw.{}.{}.{}.{}",
            self.root,
            provider,
            escape_token(ws.as_str()),
            object,
            escape_token(id.as_str())
        )
    }

    /// Every raw event of one provider and object type, across workspaces.
    pub fn raw_filter(&self, provider: Provider, object: &ObjectType) -> String {
        format!("{}.raw.{provider}.*.{object}.*", self.root)
    }

    /// Every raw event of one provider, across workspaces and object types.
    pub fn raw_provider_filter(&self, provider: Provider) -> String {
        format!("{}.raw.{provider}.>", self.root)
    }

    /// Every raw event of one provider in one workspace (CRM account).
    pub fn raw_workspace_filter(&self, provider: Provider, ws: &WorkspaceId) -> String {
        format!(
            "{}.raw.{provider}.{}.>",
            self.root,
            escape_token(ws.as_str())
        )
    }

    /// Wildcards of the event stream: raw, app and result events.
    pub fn events_wildcards(&self) -> Vec<String> {
        ["raw", "app", "result"]
            .iter()
            .map(|k| format!("{}.{k}.>", self.root))
            .collect()
    }

    /// Wildcard of outbound commands.
    pub fn outbound_wildcard(&self) -> String {
        format!("{}.out.>", self.root)
    }

    /// An app event: `crm.app.<ws>.<object>.<id>` (a call outcome the app logged).
    pub fn app(&self, ws: &WorkspaceId, object: &ObjectType, id: &RemoteId) -> String {
        format!(
            "{}.app.{}.{object}.{}",
            self.root,
            escape_token(ws.as_str()),
            escape_token(id.as_str())
        )
    }

    /// An outbound command: `crm.out.<provider>.<ws>.<id>`.
    pub fn outbound(&self, provider: Provider, ws: &WorkspaceId, id: &RemoteId) -> String {
        format!(
            "{}.out.{provider}.{}.{}",
            self.root,
            escape_token(ws.as_str()),
            escape_token(id.as_str())
        )
    }

    /// Every outbound command for one provider.
    pub fn outbound_filter(&self, provider: Provider) -> String {
        format!("{}.out.{provider}.>", self.root)
    }

    /// A provider's answer to a command: `crm.result.<provider>.<ws>.<object>.<id>`.
    pub fn result(
        &self,
        provider: Provider,
        ws: &WorkspaceId,
        object: &ObjectType,
        id: &RemoteId,
    ) -> String {
        format!(
            "{}.result.{provider}.{}.{object}.{}",
            self.root,
            escape_token(ws.as_str()),
            escape_token(id.as_str())
        )
    }

    /// Wildcard of dead letters written by crmsync itself.
    pub fn dlq_wildcard(&self) -> String {
        format!("{}.dlq.>", self.root)
    }

    /// Where a poison message from `consumer` is dead-lettered.
    pub fn dlq(&self, consumer: &str) -> String {
        format!("{}.dlq.{}", self.root, escape_token(consumer))
    }

    pub fn parse_raw(&self, subject: &str) -> Result<RawSubject, SubjectError> {
        let not_raw = || SubjectError::NotRaw(subject.chars().take(300).collect());
        let rest = subject
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix(".raw."))
            .ok_or_else(not_raw)?;
        let tokens: Vec<&str> = rest.split('.').collect();
        let [provider, ws, object, id] = tokens[..] else {
            return Err(not_raw());
        };
        Ok(RawSubject {
            provider: provider.parse()?,
            workspace: WorkspaceId::parse(unescape_token(ws)?)?,
            object: ObjectType::parse(object)?,
            id: RemoteId::parse(unescape_token(id)?)?,
        })
    }
}

/// The `Nats-Msg-Id` of a provider change: `<provider>:<ws>:<object>:<id>:<version>`,
/// every part escaped, so that a webhook copy and a poller copy of one change collide
/// in JetStream's duplicate window and nothing else does.
pub fn dedupe_key(
    provider: Provider,
    ws: &WorkspaceId,
    object: &ObjectType,
    id: &RemoteId,
    version: &str,
) -> String {
    format!(
        "{provider}:{}:{object}:{}:{}",
        escape_token(ws.as_str()),
        escape_token(id.as_str()),
        escape_token(version)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_escape_what_nats_reserves() {
        let cases = [
            ("123", "123"),
            ("a.b", "a%2Eb"),
            ("*", "%2A"),
            (">", "%3E"),
            ("a b", "a%20b"),
            ("%", "%25"),
            ("", "%"),
            ("é", "%C3%A9"),
            ("hs_object-1", "hs_object-1"),
        ];
        for (id, token) in cases {
            assert_eq!(escape_token(id), token, "{id:?}");
            assert_eq!(unescape_token(token).unwrap(), id, "{token:?}");
        }
    }

    #[test]
    fn tokens_that_escape_token_cannot_produce_are_refused() {
        for bad in [
            "", "%2", "%zz", "%2e", "%41", "a.b", "*", ">", "a b", "%C3", "%%",
        ] {
            assert!(unescape_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn raw_subjects_round_trip_and_filters_match_them() {
        let s = Subjects::new(Some("t1")).unwrap();
        let ws = WorkspaceId::parse("acme eu.1").unwrap();
        let id = RemoteId::parse("x.*>y").unwrap();
        let subject = s.raw(Provider::Zoho, &ws, &ObjectType::deal(), &id);
        assert_eq!(subject, "t1.crm.raw.zoho.acme%20eu%2E1.deal.x%2E%2A%3Ey");
        let parsed = s.parse_raw(&subject).unwrap();
        assert_eq!(parsed.provider, Provider::Zoho);
        assert_eq!(parsed.workspace, ws);
        assert_eq!(parsed.id, id);
        assert!(Subjects::new(None).unwrap().parse_raw(&subject).is_err());
        assert_eq!(
            s.raw_filter(Provider::Zoho, &ObjectType::deal()),
            "t1.crm.raw.zoho.*.deal.*"
        );
    }

    #[test]
    fn prefixes_must_be_plain_tokens() {
        for bad in ["a..b", "a.*", ">", "a b", ".a"] {
            assert!(Subjects::new(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            Subjects::new(Some("staging.eu")).unwrap().root(),
            "staging.eu.crm"
        );
    }

    fn is_valid_token(t: &str) -> bool {
        !t.is_empty()
            && t != "*"
            && t != ">"
            && !t.contains(['.', ' ', '\t', '\r', '\n', '*', '>'])
            && t.is_ascii()
    }

    proptest! {
        #[test]
        fn every_id_round_trips_through_a_token(id in any::<String>()) {
            let token = escape_token(&id);
            prop_assert!(is_valid_token(&token), "{token:?}");
            prop_assert_eq!(unescape_token(&token).unwrap(), id);
        }

        #[test]
        fn ids_made_of_subject_syntax_stay_one_token(id in "[.*> %a-z\\t]{0,40}") {
            let token = escape_token(&id);
            prop_assert!(is_valid_token(&token));
            prop_assert_eq!(unescape_token(&token).unwrap(), id);
        }

        #[test]
        fn a_raw_subject_has_exactly_six_tokens(ws in "\\PC{1,40}", id in "\\PC{1,80}") {
            let s = Subjects::new(None).unwrap();
            let ws = WorkspaceId::parse(ws).unwrap();
            let id = RemoteId::parse(id).unwrap();
            let subject = s.raw(Provider::HubSpot, &ws, &ObjectType::contact(), &id);
            let tokens: Vec<&str> = subject.split('.').collect();
            prop_assert_eq!(tokens.len(), 6);
            prop_assert!(tokens.iter().all(|t| is_valid_token(t)));
            let parsed = s.parse_raw(&subject).unwrap();
            prop_assert_eq!(parsed.workspace, ws);
            prop_assert_eq!(parsed.id, id);
        }

        #[test]
        fn distinct_changes_get_distinct_dedupe_keys(
            a in ("\\PC{1,8}", "\\PC{1,8}", "\\PC{0,8}"),
            b in ("\\PC{1,8}", "\\PC{1,8}", "\\PC{0,8}"),
        ) {
            let key = |(ws, id, v): &(String, String, String)| dedupe_key(
                Provider::HubSpot,
                &WorkspaceId::parse(ws.clone()).unwrap(),
                &ObjectType::contact(),
                &RemoteId::parse(id.clone()).unwrap(),
                v,
            );
            prop_assert_eq!(key(&a) == key(&b), a == b);
        }
    }
}
