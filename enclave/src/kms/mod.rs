//! Everything the enclave needs to get a key out of KMS.

pub mod recipient;
