//! Running as a service: the daemon loop, signals, systemd notifications, the admin endpoint,
//! the status snapshot and logging.

pub mod admin;
pub mod daemon;
pub mod sd_notify;
pub mod status;
pub mod telemetry;
