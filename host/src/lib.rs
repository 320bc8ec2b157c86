//! `signer-host`: the untrusted half of the signer. It serves host services over a
//! Unix socket and relays their requests to the enclave over vsock. It never sees a
//! plaintext key, and nothing it checks is a security boundary: the enclave decides
//! (docs/design.md §2).
//!
//! Reading order: [`commands`] (one file per subcommand) → [`server`] (bind, serve,
//! drain) → [`api`] (the router lists every route) → [`signing`] (the signing flow,
//! no HTTP types) → [`store`] (the `Store` trait and its SQLite backend) and
//! [`enclave_client`] (the multiplexed vsock connection).

pub mod api;
pub mod api_client;
pub mod commands;
pub mod config;
pub mod counted_warnings;
pub mod credentials;
pub mod enclave_client;
pub mod key_policy;
pub mod metrics;
pub mod readiness;
pub mod relay;
pub mod server;
pub mod signing;
pub mod stellar_rpc;
pub mod store;
