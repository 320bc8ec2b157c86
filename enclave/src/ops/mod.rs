//! One file per operation the host may ask for. Each takes the signing context and the
//! request's fields, decides from the enclave's own settings, and calls
//! [`crate::key_use::sign_with_key`] only once every check has passed, so a refused
//! request costs no KMS call. `generate` makes new keys and signs nothing;
//! `verify_key` signs only a key's own domain-separated check payload.

pub mod attest;
pub mod credentials;
pub mod generate;
pub mod import;
pub mod rewrap;
pub mod sign;
pub mod soroban;
pub mod verify_key;
