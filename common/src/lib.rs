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
/// (A table lookup: formatting each byte with `{:02x}` cost several percent of the host's
/// CPU per signature, at four hashes per request.)
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The bytes of hex text (either case), or `None` if it is not whole hex pairs.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// An error with its causes, `outer: inner: ...`, so "connection refused" is not hidden
/// behind "client error".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn unhex_reverses_hex_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x9f, 0xab, 0xff];
        assert_eq!(super::hex(&bytes), "009fabff");
        assert_eq!(super::unhex(&super::hex(&bytes)), Some(bytes.to_vec()));
        assert_eq!(super::unhex("9FAB"), Some(vec![0x9f, 0xab]));
        for bad in ["abc", "zz", "0g", "é0"] {
            assert_eq!(super::unhex(bad), None, "{bad}");
        }
    }
}
