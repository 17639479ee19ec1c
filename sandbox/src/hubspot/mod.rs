//! The HubSpot emulator.

pub mod webhooks;
