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
pub mod stellar;
pub mod transport;

pub use error::{ErrorCode, WireError};
