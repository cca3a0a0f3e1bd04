//! tapis-webodm-sync: keeps WebODM projects in step with drone flights stored on Tapis.

pub mod config;
pub mod http;
pub mod sim;
pub mod tapis;
pub mod webodm;
pub mod apply;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod discover;
pub mod naming;
pub mod plan;
pub mod state;
pub mod telemetry;
