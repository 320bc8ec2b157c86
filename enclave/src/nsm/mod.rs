//! The Nitro Secure Module: the source of attestation documents. Real hardware in
//! production (`/dev/nsm`); a mock with a local CA in mock builds only.

#[cfg(feature = "mock")]
pub mod mock;
pub mod nitro;

#[derive(Debug, thiserror::Error)]
pub enum NsmError {
    #[error("cannot open /dev/nsm (is this running inside a Nitro Enclave?)")]
    Unavailable,
    #[error("the NSM refused the request: {0}")]
    Refused(String),
}

/// Something that can attest to this enclave's measurements.
pub trait Nsm: Send + Sync + 'static {
    /// An attestation document binding `public_key` (DER SubjectPublicKeyInfo).
    fn attest(&self, public_key: &[u8]) -> Result<Vec<u8>, NsmError>;

    /// An attestation document for a caller who wants to know which build it talks to:
    /// `user_data` and `nonce`, and no public key, so KMS can never use it as a
    /// `Recipient` (nothing could be decrypted to it).
    fn attest_for_caller(&self, user_data: &[u8], nonce: &[u8]) -> Result<Vec<u8>, NsmError>;

    /// Random bytes from the NSM's hardware source (at least 32), mixed into every
    /// seed the enclave generates with the OS's own RNG.
    fn random(&self) -> Result<Vec<u8>, NsmError>;
}
