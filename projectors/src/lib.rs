//! Projectors: durable JetStream pull consumers that turn events into Postgres rows.
//!
//! A batch of messages is decoded and normalised, folded per row with the
//! order-independent field merge, and written with its checkpoint in one
//! transaction; only then is it acknowledged. A message that cannot be projected is
//! retried with growing delays and, at its last delivery, dead-lettered, so it never
//! blocks the rest.

pub mod checkpoint;
pub mod dlq;
pub mod mappings;
pub mod projector;
pub mod tables;

pub use projector::{Projector, ProjectorConfig};
pub use tables::Table;

/// The migrations of crmsync's Postgres schema, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A migrator of its own (to configure), over the same embedded migrations.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("../migrations")
}
