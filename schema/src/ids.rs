//! Identifiers, each built only through `parse`: once you hold one, it is valid.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("unknown provider `{0}`: expected one of hubspot, zoho, odoo")]
    UnknownProvider(String),
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} must not contain control characters")]
    ControlCharacter { what: &'static str },
    #[error("object type `{0}` must be lower-case letters, digits and `_`")]
    BadObjectType(String),
}

/// A CRM crmsync talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    HubSpot,
    Zoho,
    Odoo,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::HubSpot, Provider::Zoho, Provider::Odoo];

    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::HubSpot => "hubspot",
            Provider::Zoho => "zoho",
            Provider::Odoo => "odoo",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| IdError::UnknownProvider(s.chars().take(64).collect()))
    }
}

fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter { what });
    }
    Ok(())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The longest value accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_text($what, &s, $max)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// The tenant a record belongs to: the app's workspace, or for raw HubSpot events
    /// the portal id until a connection maps it. Any text without control characters.
    WorkspaceId,
    "a workspace id",
    128
);

text_id!(
    /// A record's id in its CRM. CRMs use digits, but crmsync accepts any text without
    /// control characters: subjects escape it.
    RemoteId,
    "a CRM record id",
    255
);

/// The type of a record: `contact`, `company`, `deal`, `call`, …
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ObjectType(String);

/// An object type's name from its plural, as a table or a provider's API names it
/// (`contacts` → `contact`); any other name as it is.
pub fn singular(name: &str) -> &str {
    match name {
        "contacts" => "contact",
        "companies" => "company",
        "deals" => "deal",
        "activities" => "activity",
        other => other,
    }
}

impl ObjectType {
    pub const MAX_LEN: usize = 64;

    pub fn contact() -> Self {
        Self("contact".into())
    }
    pub fn company() -> Self {
        Self("company".into())
    }
    pub fn deal() -> Self {
        Self("deal".into())
    }

    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(s))
        } else {
            Err(IdError::BadObjectType(s.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ObjectType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_parse_by_their_lower_case_names() {
        for p in Provider::ALL {
            assert_eq!(p.as_str().parse::<Provider>(), Ok(p));
        }
        assert!(matches!(
            "salesforce".parse::<Provider>(),
            Err(IdError::UnknownProvider(_))
        ));
        assert!("HubSpot".parse::<Provider>().is_err());
    }

    #[test]
    fn ids_refuse_empty_overlong_and_control_characters() {
        assert_eq!(
            RemoteId::parse(""),
            Err(IdError::Empty {
                what: "a CRM record id"
            })
        );
        assert!(RemoteId::parse("a\nb").is_err());
        assert!(RemoteId::parse("x".repeat(256)).is_err());
        assert!(RemoteId::parse("x".repeat(255)).is_ok());
        assert!(WorkspaceId::parse("acme.eu *>").is_ok());
    }

    #[test]
    fn object_types_are_plain_lower_case_tokens() {
        assert!(ObjectType::parse("contact").is_ok());
        assert!(ObjectType::parse("line_item2").is_ok());
        for bad in ["", "Contact", "a.b", "a*", ">", "a b"] {
            assert!(ObjectType::parse(bad).is_err(), "{bad:?}");
        }
    }
}
