//! tapis-webodm-sync: keeps WebODM projects in step with drone flights stored on Tapis.

pub mod config;
pub mod http;
pub mod sim;
pub mod tapis;
pub mod webodm;
