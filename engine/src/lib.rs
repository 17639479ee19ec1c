//! The crmsync engine: configuration, topology, start-up and the CLI's commands.

pub mod app;
pub mod bench;
pub mod budget;
pub mod config;
pub mod cursor;
pub mod db;
pub mod demo;
pub mod feed;
pub mod health;
pub mod history;
pub mod hubspot;
pub mod hydrator;
pub mod lease;
pub mod logging;
pub mod odoo;
pub mod outbound;
pub mod pause;
pub mod replay;
pub mod routes;
pub mod sandbox_cmd;
pub mod status;
pub mod sync_log;
pub mod topology;
pub mod zoho;

pub use app::{Engine, Role};
pub use config::Settings;
