//! The test signature that proves a stored key works before it is used (verified
//! import, docs/design.md §3): the enclave decrypts the key, checks it against its
//! public key and signs [`key_check_hash`]. The payload is domain-separated and fixed
//! by the key alone, so the signature can never stand for a Stellar transaction or a
//! Soroban authorization, whatever the host asks for.

use sha2::{Digest, Sha256};

/// What the key-check payload starts with; nothing Stellar signs starts with it (a
/// transaction or Soroban payload hash covers a 32-byte network id first).
pub const KEY_CHECK_DOMAIN: &[u8] = b"stellar-nitro-signer/key-check/v1\0";

/// SHA-256(domain ‖ public key): what a key check signs.
pub fn key_check_hash(public_key: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(KEY_CHECK_DOMAIN);
    hasher.update(public_key);
    hasher.finalize().into()
}

/// Whether `signature` is `public_key`'s key-check signature.
pub fn verify_key_check(public_key: &[u8; 32], signature: &[u8]) -> bool {
    let Ok(verifying) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    ed25519_dalek::Signature::from_slice(signature).is_ok_and(|signature| {
        verifying
            .verify_strict(&key_check_hash(public_key), &signature)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn the_check_signature_binds_the_key_and_the_domain() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key().to_bytes();
        let good = key.sign(&key_check_hash(&public)).to_bytes();
        assert!(verify_key_check(&public, &good));
        let other = SigningKey::from_bytes(&[8; 32]);
        let public_other = other.verifying_key().to_bytes();
        assert!(
            !verify_key_check(&public_other, &good),
            "another key's check"
        );
        let undomained = key.sign(&Sha256::digest(public)).to_bytes();
        assert!(!verify_key_check(&public, &undomained), "no domain");
        assert!(!verify_key_check(&public, &good[..63]));
    }
}
