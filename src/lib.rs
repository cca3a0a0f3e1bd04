//! tapis-webodm-sync: keeps WebODM projects in step with drone flights stored on Tapis.
pub mod sim;
