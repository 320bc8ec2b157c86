//! Code shared by `signer-host` and `signer-enclave`: the wire protocol, its framing,
//! the transports (vsock, or Unix sockets in mock-vsock mode) and stable error codes.

pub mod attestation;
pub mod ber;
pub mod cms;
pub mod error;
pub mod frame;
pub mod logging;
#[cfg(feature = "mock")]
pub mod mock_nsm;
pub mod policy;
pub mod protocol;
pub mod signal;
pub mod soroban;
pub mod stellar;
pub mod transport;

pub use error::{ErrorCode, WireError};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
