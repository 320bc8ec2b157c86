//! A local stand-in for AWS KMS, for development and tests only. It speaks the KMS
//! JSON 1.1 protocol over HTTPS so the unmodified `aws-sdk-kms` client talks to it,
//! verifies attestation documents against a configured root, and evaluates the same
//! key-policy JSON that ships in `kms-policy/`.

pub mod admin_client;
pub mod key_policy;
pub mod keystore;
pub mod recipient;
pub mod server;

pub use server::{FaultState, Faults, MockKms, MockKmsConfig, MockKmsError};
