//! Everything the enclave needs to get a key out of KMS.

pub mod client;
pub mod connector;
pub mod recipient;
