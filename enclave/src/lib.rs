//! `signer-enclave`: the process inside the Nitro Enclave. It is the only place a
//! private key is ever plaintext (DESIGN.md §2). This crate holds the vsock server and
//! the request handling; the `mock` feature adds what local development needs and is
//! never part of a production image.

pub mod attestor;
pub mod cache;
pub mod handler;
pub mod keys;
pub mod kms;
pub mod nsm;
pub mod server;

use common::protocol::BuildFlavor;

/// What this binary was compiled as; sent to the host in the handshake.
pub const BUILD_FLAVOR: BuildFlavor = if cfg!(feature = "mock") {
    BuildFlavor::Mock
} else {
    BuildFlavor::Production
};
