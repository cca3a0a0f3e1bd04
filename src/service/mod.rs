//! Running as a service: the daemon loop, signals, systemd notifications, the admin endpoint
//! and its status page, the status snapshot, notifications (mail, webhook) and logging.

pub mod admin;
pub mod daemon;
pub mod notifications;
pub mod page;
pub mod sd_notify;
pub mod status;
pub mod telemetry;
