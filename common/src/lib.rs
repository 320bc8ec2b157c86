//! Code shared by `signer-host`, `signer-enclave` and the development tools, in three
//! groups that each side enables as cargo features, so each compiles only what it uses
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

#[cfg(feature = "attestation")]
pub mod attestation;
pub mod logging;
#[cfg(feature = "mock")]
pub mod mock_nsm;
pub mod signal;
#[cfg(feature = "stellar")]
pub mod stellar;
#[cfg(feature = "wire")]
pub mod wire;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
