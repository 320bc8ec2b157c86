//! The host↔enclave wire protocol: what crosses the vsock boundary and how.
//!
//! - [`messages`]: the request and response enums and the protocol version;
//! - [`frame`]: length-prefixed frames with a hard size limit;
//! - [`transport`]: vsock, or Unix sockets in mock-vsock mode;
//! - [`hello`]: the version exchange that opens every connection, for both sides;
//! - [`error`]: the stable error codes every refusal carries, host API included.

pub mod error;
pub mod frame;
pub mod hello;
pub mod messages;
pub mod transport;

pub use error::{ErrorCode, WireError};
