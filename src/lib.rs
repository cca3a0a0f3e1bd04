//! tapis-webodm-sync: keeps WebODM projects in step with drone flights stored on Tapis.
//!
//! Data flows one way:
//! `config` → `service` (daemon loop) → `engine` (discover → plan → apply → state), with
//! `clients` (Tapis, WebODM over shared HTTP plumbing) doing the I/O and `metrics` as the
//! low-level hooks both call. `sim` is the simulator used by `demo`, the tests and benches.

pub mod cli;
pub mod clients;
pub mod config;
pub mod demo;
pub mod engine;
pub mod metrics;
pub mod service;
pub mod sim;
