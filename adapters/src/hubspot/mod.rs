//! HubSpot: webhook verification and parsing, and mapping of its payloads onto the
//! canonical model.

pub mod client;
pub mod mapping;
pub mod oauth;
pub mod snapshot;
pub mod webhook;
