//! Stellar rules both sides apply to untrusted XDR: the enclave to decide what it signs,
//! the host to answer honest callers early (docs/design.md §6).
//!
//! - [`envelope`]: decoding with bounded limits, signature payload hashes, required
//!   signers, decorated signatures, the account whose sequence a transaction consumes;
//! - [`soroban`]: authorization entries and their signature payloads;
//! - [`signing_policy`]: what the enclave's keys may sign, and its settings.

pub mod envelope;
pub mod signing_policy;
pub mod soroban;
