//! Code shared by `signer-host`, `signer-enclave` and the development tools, in three
//! groups (and the mock NSM) that each side enables as cargo features, so each compiles only what it uses
//! (docs/design.md §8):
//!
//! - [`wire`] (feature `wire`): the host↔enclave protocol: messages, frames,
//!   transports, error codes and the Hello exchange;
//! - [`stellar`] (feature `stellar`): envelopes, hashing, required signers, Soroban
//!   payloads and the signing policy;
//! - [`attestation`] (feature `attestation`): Nitro attestation documents (COSE), CMS
//!   and BER, used by the enclave and the mock KMS, never by the host;
//! - `mock_nsm` (feature `mock`): the mock NSM of local mode. A production enclave build
//!   never enables it (docs/design.md §2 invariant 6).
#![warn(missing_docs)]
// Trusted code: casts of untrusted values must be checked conversions (see the
// workspace lint list in Cargo.toml).
#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

#[cfg(feature = "attestation")]
pub mod attestation;
pub mod kms_key;
pub mod logging;
#[cfg(feature = "mock")]
pub mod mock_nsm;
pub mod signal;
#[cfg(feature = "stellar")]
pub mod stellar;
#[cfg(feature = "wire")]
pub mod wire;

/// Lower-case hex: the one encoding of hashes, PCRs and ids in logs, the API and the store.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
