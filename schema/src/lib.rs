//! The canonical model of crmsync, with no I/O.
//!
//! - [`ids`]: provider names, workspace ids, CRM ids and object types as parsed newtypes.
//! - [`subject`]: NATS subject building with escaping of arbitrary ids.
//! - [`envelope`]: the CloudEvents envelope of every event crmsync stores.
//! - [`binding`]: the CloudEvents binary-mode binding for NATS messages.
//! - [`fields`]: per-field versioned values, merged so that any order of the same
//!   events gives the same state.
//! - [`conflict`]: the conflict rules, as pure functions.
//! - [`mapping`]: per-workspace field mappings and their transforms.

pub mod binding;
pub mod conflict;
pub mod envelope;
pub mod fields;
pub mod ids;
pub mod mapping;
pub mod subject;

pub use cloudevents;
pub use envelope::{Change, RawEvent};
pub use fields::{FieldSet, Version};
pub use ids::{ObjectType, Provider, RemoteId, WorkspaceId};
pub use subject::Subjects;
