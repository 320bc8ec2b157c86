//! Stellar rules both sides apply to untrusted XDR: the enclave to decide what it signs,
//! the host to answer honest callers early (docs/design.md §6).
//!
//! - [`envelope`]: decoding with bounded limits, signature payload hashes, required
//!   signers, decorated signatures, the account whose sequence a transaction consumes;
//! - [`soroban`]: authorization entries and their signature payloads;
//! - [`signing_policy`]: what the enclave's keys may sign, and its settings;
//! - [`key_check`]: the domain-separated test signature of a verified import.

pub mod envelope;
pub mod key_check;
pub mod signing_policy;
pub mod soroban;
