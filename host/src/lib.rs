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

/// Locks `mutex`, also after a thread panicked holding it: what it guards is kept
/// consistent by every holder (no invariant spans a panic point).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for reading a `RwLock`.
pub(crate) fn read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for writing a `RwLock`.
pub(crate) fn write<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
