//! tapis-webodm-sync: keeps WebODM projects in step with drone flights stored on Tapis.

pub mod admin;
pub mod apply;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod discover;
pub mod http;
pub mod metrics;
pub mod naming;
pub mod notify;
pub mod plan;
pub mod sim;
pub mod state;
pub mod status;
pub mod tapis;
pub mod telemetry;
pub mod webodm;
