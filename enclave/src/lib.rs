//! `signer-enclave`: the process inside the Nitro Enclave, the only place a private key
//! is ever plaintext (docs/design.md §2). Everything here is on the trusted side of the
//! boundary: it decides from its own measured settings what to sign, whatever the host
//! sends.
//!
//! Reading order: [`server`] (connections and the Hello exchange) → [`dispatch`] (one
//! request to one operation) → [`ops`] (one file per operation) → [`key_use`] (the one
//! path that decrypts a key and signs). [`kms`] and [`nsm`] are the outside world;
//! [`config`] and [`startup`] build the [`context::SigningContext`]. The `mock` feature
//! adds what local development needs and is never part of a production image.
// Trusted code: casts of untrusted values must be checked conversions (see the
// workspace lint list in Cargo.toml).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

pub mod attestor;
pub mod budget;
pub mod cache;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod errors;
pub mod key_use;
pub mod keys;
pub mod kms;
pub mod metrics;
pub mod nsm;
pub mod ops;
pub mod server;
pub mod startup;

#[cfg(test)]
mod tests;

use common::wire::messages::BuildFlavor;

/// What this binary was compiled as; sent to the host in the handshake.
pub const BUILD_FLAVOR: BuildFlavor = if cfg!(feature = "mock") {
    BuildFlavor::Mock
} else {
    BuildFlavor::Production
};
