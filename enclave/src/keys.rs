//! Key formats (docs/design.md §3), opened only here. Every secret lives in a [`Seed`]
//! (boxed, wiped on drop), a `Zeroizing` buffer or a `ZeroizeOnDrop` type, and is
//! dropped as soon as the signature exists.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use common::wire::messages::KeyFormat;
use ed25519_dalek::{Signer, SigningKey};
use zeroize::Zeroizing;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the decrypted secret is neither 32 raw bytes nor an S... seed ({len} bytes); \
         encrypt the raw seed or its strkey"
    )]
    UnrecognisedSecret { len: usize },
    #[error("the data key is {len} bytes, expected 32")]
    DataKeyLength { len: usize },
    #[error("the sealed seed does not open with this data key and public key")]
    SealBroken,
    #[error("the decrypted key belongs to {derived}, not the requested {expected}")]
    PublicKeyMismatch { expected: String, derived: String },
    #[error("{0:?} is not a Stellar account public key")]
    BadPublicKey(String),
    #[error("the random source gave {len} bytes, expected at least 32")]
    WeakRandom { len: usize },
    #[error(
        "{public_key}: the wallet-backend ciphertext does not open with this passphrase \
         (base64 of a 12-byte nonce, then AES-128-GCM ciphertext and tag, {len} bytes given)"
    )]
    WalletBackendSealBroken { public_key: String, len: usize },
}

/// A seed on the heap, wiped on drop. Boxed so that moving it (returning it, storing it
/// in the cache's map, which moves entries when it grows) moves a pointer and never
/// leaves an unwiped copy of the bytes behind.
pub struct Seed(Box<[u8; 32]>);

impl std::ops::Deref for Seed {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bytes: a seed must not reach a log line or an error message.
        f.write_str("Seed(redacted)")
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut *self.0);
    }
}

/// A [`Seed`] holding `bytes` (exactly 32), copied straight into its heap buffer.
pub fn seed_from_slice(bytes: &[u8]) -> Option<Seed> {
    if bytes.len() != 32 {
        return None;
    }
    let mut seed = Seed(Box::new([0u8; 32]));
    seed.0.copy_from_slice(bytes);
    Some(seed)
}

/// The KMS encryption context of a stored key (docs/design.md §3): its public key, and
/// for `envelope` keys the format too, so a data key can never be presented (and
/// opened) as a `kms-direct` seed.
pub fn kms_context(format: KeyFormat, public_key: &str) -> Vec<(&'static str, &str)> {
    match format {
        KeyFormat::KmsDirect => vec![("pubkey", public_key)],
        KeyFormat::Envelope => vec![("format", "envelope"), ("pubkey", public_key)],
    }
}

/// A new seed: the OS RNG's bytes XOR the NSM's, drawn straight into the seed's own
/// buffer (no copy left behind), so it is unpredictable while either source is.
pub fn draw_seed(nsm_random: &[u8]) -> Result<Seed, KeyError> {
    let Some(nsm_random) = nsm_random.get(..32) else {
        return Err(KeyError::WeakRandom {
            len: nsm_random.len(),
        });
    };
    let mut seed = Seed(Box::new([0u8; 32]));
    aws_lc_rs::rand::fill(&mut seed.0[..]).map_err(|_| KeyError::WeakRandom { len: 0 })?;
    mix_into(&mut seed.0, nsm_random);
    Ok(seed)
}

/// `seed ^= other`, byte by byte: the mixing step of [`draw_seed`].
fn mix_into(seed: &mut [u8; 32], other: &[u8]) {
    for (byte, mixed) in seed.iter_mut().zip(other) {
        *byte ^= mixed;
    }
}

/// The seed of a `kms-direct` secret: `aws kms encrypt` of the raw 32 bytes or of the
/// `S...` strkey (surrounding whitespace tolerated, as a file with a newline).
pub fn seed_from_kms_direct(plaintext: &[u8]) -> Result<Seed, KeyError> {
    if let Some(seed) = seed_from_slice(plaintext) {
        return Ok(seed);
    }
    let text = std::str::from_utf8(plaintext).map(str::trim).map_err(|_| {
        KeyError::UnrecognisedSecret {
            len: plaintext.len(),
        }
    })?;
    match stellar_strkey::ed25519::PrivateKey::from_string(text) {
        Ok(mut key) => {
            let seed = seed_from_slice(&key.0);
            // The strkey decoder's own copy is wiped here, not left on the stack.
            zeroize::Zeroize::zeroize(&mut key.0);
            seed.ok_or(KeyError::UnrecognisedSecret {
                len: plaintext.len(),
            })
        }
        Err(_) => Err(KeyError::UnrecognisedSecret {
            len: plaintext.len(),
        }),
    }
}

/// The seed of an `envelope` key: `nonce(12) ‖ AES-256-GCM(seed) ‖ tag(16)`, AAD = the
/// public key's strkey, under the data key KMS returned.
pub fn open_sealed_seed(
    data_key: &[u8],
    sealed: &[u8],
    public_key: &str,
) -> Result<Seed, KeyError> {
    if data_key.len() != 32 {
        return Err(KeyError::DataKeyLength {
            len: data_key.len(),
        });
    }
    if sealed.len() != 12 + 32 + 16 {
        return Err(KeyError::SealBroken);
    }
    let cipher = Aes256Gcm::new_from_slice(data_key).map_err(|_| KeyError::SealBroken)?;
    let (nonce, ciphertext) = sealed.split_at(12);
    let opened = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: public_key.as_bytes(),
                },
            )
            .map_err(|_| KeyError::SealBroken)?,
    );
    seed_from_slice(&opened).ok_or(KeyError::SealBroken)
}

/// The seed of a stellar/wallet-backend channel key: `nonce(12) ‖ AES-128-GCM(S...) ‖
/// tag(16)`, no AAD, under SHA-256(passphrase)[:16] (its `DefaultPrivateKeyEncrypter`),
/// checked against `public_key`.
pub fn open_wallet_backend_seed(
    passphrase: &[u8],
    encrypted: &[u8],
    public_key: &str,
) -> Result<Seed, KeyError> {
    use sha2::Digest;
    let broken = || KeyError::WalletBackendSealBroken {
        public_key: public_key.to_string(),
        len: encrypted.len(),
    };
    let digest = Zeroizing::new(<[u8; 32]>::from(sha2::Sha256::digest(passphrase)));
    let cipher = aes_gcm::Aes128Gcm::new_from_slice(&digest[..16]).map_err(|_| broken())?;
    if encrypted.len() < 12 + 16 {
        return Err(broken());
    }
    let (nonce, ciphertext) = encrypted.split_at(12);
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| broken())?,
    );
    let seed = seed_from_kms_direct(&plaintext)?;
    let derived = public_key_of(&seed);
    if derived != public_key {
        return Err(KeyError::PublicKeyMismatch {
            expected: public_key.to_string(),
            derived,
        });
    }
    Ok(seed)
}

/// Seals a seed under a data key (used when the enclave generates keys, and by tests).
pub fn seal_seed(
    data_key: &[u8; 32],
    seed: &[u8; 32],
    public_key: &str,
    nonce: [u8; 12],
) -> Vec<u8> {
    let cipher = Aes256Gcm::new(data_key.into());
    let mut out = nonce.to_vec();
    // Encryption with a valid 32-byte key cannot fail.
    if let Ok(sealed) = cipher.encrypt(
        Nonce::from_slice(&nonce),
        Payload {
            msg: seed,
            aad: public_key.as_bytes(),
        },
    ) {
        out.extend(sealed);
    }
    out
}

/// The public key of `seed` as a strkey.
pub fn public_key_of(seed: &[u8; 32]) -> String {
    let signing = SigningKey::from_bytes(seed);
    format!(
        "{}",
        stellar_strkey::ed25519::PublicKey(signing.verifying_key().to_bytes())
    )
}

/// Signs `hash` with `seed` after checking it belongs to `expected_public_key`
/// (docs/design.md §2 invariant 4). Returns the raw public key and the signature.
pub fn sign_checked(
    seed: &[u8; 32],
    expected_public_key: &str,
    hash: &[u8; 32],
) -> Result<([u8; 32], [u8; 64]), KeyError> {
    let expected = stellar_strkey::ed25519::PublicKey::from_string(expected_public_key)
        .map_err(|_| KeyError::BadPublicKey(expected_public_key.to_string()))?;
    // SigningKey zeroizes itself on drop (ed25519-dalek's `zeroize` feature).
    let signing = SigningKey::from_bytes(seed);
    let derived = signing.verifying_key().to_bytes();
    if derived != expected.0 {
        return Err(KeyError::PublicKeyMismatch {
            expected: expected_public_key.to_string(),
            derived: format!("{}", stellar_strkey::ed25519::PublicKey(derived)),
        });
    }
    Ok((derived, signing.sign(hash).to_bytes()))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_seed_mixes_both_sources_and_needs_32_nsm_bytes() {
        let mut seed = [0b1010_1010u8; 32];
        mix_into(&mut seed, &[0b0110_0110u8; 32]);
        assert_eq!(seed, [0b1100_1100u8; 32]);
        assert!(matches!(
            draw_seed(&[7; 31]),
            Err(KeyError::WeakRandom { len: 31 })
        ));
        // The OS contributes: the same NSM bytes never give the same seed twice.
        let nsm = [0x42u8; 32];
        let (first, second) = (draw_seed(&nsm).unwrap(), draw_seed(&nsm).unwrap());
        assert_ne!(*first, *second);
        assert_ne!(*first, nsm);
    }

    use super::*;
    use ed25519_dalek::{Verifier, VerifyingKey};

    const SEED: [u8; 32] = [7u8; 32];

    #[test]
    fn seeds_never_show_their_bytes() {
        let seed = seed_from_slice(&SEED).unwrap();
        assert_eq!(*seed, SEED);
        assert_eq!(format!("{seed:?}"), "Seed(redacted)");
        assert!(seed_from_slice(&SEED[..31]).is_none());
    }

    #[test]
    fn kms_direct_accepts_raw_and_strkey_seeds() {
        let strkey = format!(
            "{}",
            stellar_strkey::ed25519::PrivateKey(SEED).as_unredacted()
        );
        assert_eq!(*seed_from_kms_direct(&SEED).unwrap(), SEED);
        assert_eq!(*seed_from_kms_direct(strkey.as_bytes()).unwrap(), SEED);
        assert_eq!(
            *seed_from_kms_direct(format!("{strkey}\n").as_bytes()).unwrap(),
            SEED
        );
        assert_eq!(
            seed_from_kms_direct(b"not a key").unwrap_err(),
            KeyError::UnrecognisedSecret { len: 9 }
        );
        // The error never echoes the secret.
        let near = &strkey.as_bytes()[..55];
        let message = seed_from_kms_direct(near).unwrap_err().to_string();
        assert!(!message.contains(&strkey[..20]));
    }

    #[test]
    fn sealed_seeds_open_only_with_their_key_and_public_key() {
        let data_key = [9u8; 32];
        let public_key = public_key_of(&SEED);
        let sealed = seal_seed(&data_key, &SEED, &public_key, [1; 12]);
        assert_eq!(
            *open_sealed_seed(&data_key, &sealed, &public_key).unwrap(),
            SEED
        );
        let other = public_key_of(&[8u8; 32]);
        assert_eq!(
            open_sealed_seed(&data_key, &sealed, &other).unwrap_err(),
            KeyError::SealBroken
        );
        assert_eq!(
            open_sealed_seed(&[1u8; 32], &sealed, &public_key).unwrap_err(),
            KeyError::SealBroken
        );
        assert!(matches!(
            open_sealed_seed(&[1u8; 16], &sealed, &public_key),
            Err(KeyError::DataKeyLength { len: 16 })
        ));
    }

    #[test]
    fn signs_only_for_the_matching_public_key() {
        let public_key = public_key_of(&SEED);
        let hash = [3u8; 32];
        let (raw, signature) = sign_checked(&SEED, &public_key, &hash).unwrap();
        VerifyingKey::from_bytes(&raw)
            .unwrap()
            .verify(&hash, &ed25519_dalek::Signature::from_bytes(&signature))
            .unwrap();
        let other = public_key_of(&[8u8; 32]);
        assert!(matches!(
            sign_checked(&SEED, &other, &hash),
            Err(KeyError::PublicKeyMismatch { .. })
        ));
    }
}
