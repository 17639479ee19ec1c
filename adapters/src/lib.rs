//! Provider adapters: one folder per CRM, the same shape in each, plus what they share
//! (secrets, telemetry).

pub mod error;
pub mod hubspot;
pub mod oauth;
pub mod odoo;
pub mod ratelimit;
pub mod retry;
pub mod secret;
pub mod telemetry;
pub mod vault;
pub mod zoho;

pub use error::{ErrorKind, ProviderError};
pub use ratelimit::{BudgetFuture, RateLimiter, RateLimits, SharedBudget};
pub use secret::Secret;
pub use telemetry::Metrics;
pub use vault::Vault;

use crmsync_schema::mapping::Landing;
use crmsync_schema::{FieldSet, Provider, RemoteId};

/// Where a provider's fields of one object type land by default: what a workspace's
/// field mapping is resolved and checked against.
#[derive(Debug, Clone, Copy)]
pub struct DefaultLanding<'a> {
    pub provider: Provider,
    pub object: &'a str,
}

impl Landing for DefaultLanding<'_> {
    fn landing(&self, field: &str) -> String {
        match self.provider {
            Provider::HubSpot => hubspot::mapping::landing(self.object, field),
            Provider::Zoho => zoho::mapping::landing(self.object, field),
            Provider::Odoo => odoo::mapping::landing(self.object, field),
        }
    }

    fn default_targets(&self) -> Vec<(String, String)> {
        match self.provider {
            Provider::HubSpot => hubspot::mapping::default_targets(self.object),
            Provider::Zoho => zoho::mapping::default_targets(self.object),
            Provider::Odoo => odoo::mapping::default_targets(self.object),
        }
    }
}

/// A change to one projected row, normalised from a provider event.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub remote_id: RemoteId,
    pub fields: FieldSet,
}

/// A link set's verdict on the links it does not list: gone as of `version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retraction {
    pub from_type: String,
    pub from_id: String,
    pub to_type: String,
    /// The links that stay.
    pub keep: Vec<String>,
    pub version: crmsync_schema::Version,
}

/// A record merged away: every link naming it, on either side, is gone as of
/// `version`. The type and id are escaped as the link rows name them.
#[derive(Debug, Clone, PartialEq)]
pub struct Unlink {
    pub object_type: String,
    pub id: String,
    pub version: crmsync_schema::Version,
}

/// Why a provider event could not be normalised. Permanent: retrying will not help.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("event data is not a valid {provider} event: {reason}")]
    Malformed {
        provider: &'static str,
        reason: String,
    },
}
