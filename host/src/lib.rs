//! `signer-host`: the untrusted half of the signer. It serves host services over a
//! Unix socket and relays their requests to the enclave over vsock. It never sees a
//! plaintext key (DESIGN.md §2).

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod credentials;
pub mod dev;
pub mod enclave_client;
pub mod policy;
pub mod relay;
pub mod routes;
pub mod server;
pub mod store;
