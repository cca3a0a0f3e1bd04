//! The controller: discover the desired state, plan against the observed state, apply the
//! difference, record it in the store.

pub mod access;
pub mod apply;
pub mod discover;
pub mod naming;
pub mod pass;
pub mod plan;
pub mod processing;
pub mod results;
pub mod state;
pub mod summary;

pub use summary::{CreatedProject, PassSummary};
