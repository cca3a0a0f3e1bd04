//! The two REST clients and what they share: Tapis and WebODM know nothing of flights.

mod bandwidth;
pub mod error;
pub mod http;
pub mod retry;
pub mod tapis;
pub mod webodm;

pub use error::ApiError;
pub use http::RequestCounts;
pub use retry::RetryPolicy;

use crate::config::Config;

/// Both service clients, built from one config.
pub struct Clients {
    /// Tapis.
    pub tapis: tapis::TapisClient,
    /// WebODM.
    pub webodm: webodm::WebodmClient,
}

impl Clients {
    /// Builds both clients (no request is sent yet).
    pub fn new(config: &Config) -> Result<Clients, ApiError> {
        Ok(Clients {
            tapis: tapis::TapisClient::new(&config.tapis, &config.retry)?,
            webodm: webodm::WebodmClient::new(&config.webodm, &config.retry)?,
        })
    }
}
