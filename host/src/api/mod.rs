//! The host API: HTTP/JSON over a Unix socket. [`router`] lists every route; each
//! resource has its own file; handlers only translate between JSON and the
//! [`crate::signing`] flow or the store. Every error is
//! `{"error": {"code": "...", "message": "..."}}` with a stable code.

mod attestation;
pub mod callers;
mod channels;
pub mod connections;
pub mod error;
pub mod extract;
mod fee_bump;
mod gate;
mod health;
mod json;
mod key_import;
mod key_lifecycle;
mod keys;
mod metrics;
mod provisioning;
mod router;
mod sign;
mod soroban;
pub mod state;

pub use error::ApiError;
pub use extract::Caller;
pub use gate::BodyLimits;
pub use router::router;
pub use state::{AppState, Shared};
