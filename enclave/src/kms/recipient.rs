//! The enclave's KMS `Recipient` key: an RSA-2048 key pair (aws-lc-rs, constant-time)
//! whose public half goes into the attestation document, so KMS encrypts its answer to
//! it. The private half never leaves enclave memory.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use common::attestation::cms::{CmsError, RecipientId, parse_envelope};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum RecipientError {
    #[error("generating the RSA key failed")]
    KeyGeneration,
    #[error("the RSA key was rejected: {0}")]
    KeyRejected(String),
    #[error("{0}")]
    Envelope(#[from] CmsError),
    #[error(
        "the envelope is addressed to another key (subjectKeyIdentifier {actual}, ours {expected})"
    )]
    WrongRecipient { expected: String, actual: String },
    #[error("RSA-OAEP decryption of the content key failed")]
    KeyDecryption,
    #[error("the content key is {0} bytes, expected 32 (AES-256)")]
    ContentKeyLength(usize),
    #[error("AES-256-CBC decryption of the content failed (bad key or padding)")]
    ContentDecryption,
}

use common::hex;

pub struct RecipientKey {
    key: OaepPrivateDecryptingKey,
    spki_der: Vec<u8>,
    key_id: [u8; 32],
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material; the key id identifies it.
        f.debug_struct("RecipientKey")
            .field("subject_key_id", &hex(&self.key_id))
            .finish_non_exhaustive()
    }
}

/// One DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len().to_be_bytes();
    let significant = &len[len.iter().take_while(|&&b| b == 0).count()..];
    let mut out = vec![tag];
    match significant {
        [] => out.push(0),
        [short] if *short < 0x80 => out.push(*short),
        long => {
            // At most 8 length bytes: usize is at most 64 bits.
            out.push(u8::try_from(long.len()).map_or(0x88, |n| 0x80 | n));
            out.extend_from_slice(long);
        }
    }
    out.extend_from_slice(content);
    out
}

impl RecipientKey {
    pub fn generate() -> Result<RecipientKey, RecipientError> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| RecipientError::KeyGeneration)?;
        Self::from_key(key)
    }

    /// From a PKCS#8 DER private key (tests use the fixtures' keys).
    pub fn from_pkcs8(der: &[u8]) -> Result<RecipientKey, RecipientError> {
        let key = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| RecipientError::KeyRejected(e.to_string()))?;
        Self::from_key(key)
    }

    /// From a PKCS#1 `RSAPrivateKey` in DER, as OpenSSL writes it (the fixtures' keys,
    /// the fuzz targets), wrapped in the PKCS#8 `PrivateKeyInfo` aws-lc-rs reads.
    pub fn from_pkcs1(pkcs1: &[u8]) -> Result<RecipientKey, RecipientError> {
        // AlgorithmIdentifier { rsaEncryption, NULL }
        const RSA_ENCRYPTION: [u8; 15] = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let mut body = vec![0x02, 0x01, 0x00]; // version 0
        body.extend_from_slice(&RSA_ENCRYPTION);
        body.extend(der_tlv(0x04, pkcs1));
        Self::from_pkcs8(&der_tlv(0x30, &body))
    }

    fn from_key(key: PrivateDecryptingKey) -> Result<RecipientKey, RecipientError> {
        let spki_der = key
            .public_key()
            .as_der()
            .map_err(|_| RecipientError::KeyRejected("cannot encode the public key".into()))?
            .as_ref()
            .to_vec();
        let mut key_id = [0u8; 32];
        key_id.copy_from_slice(digest(&SHA256, &spki_der).as_ref());
        let key = OaepPrivateDecryptingKey::new(key)
            .map_err(|_| RecipientError::KeyRejected("not usable for OAEP".into()))?;
        Ok(RecipientKey {
            key,
            spki_der,
            key_id,
        })
    }

    /// DER SubjectPublicKeyInfo: what the attestation document's `public_key` carries.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of the SubjectPublicKeyInfo: the `rid` real KMS puts in its envelopes.
    pub fn subject_key_id(&self) -> &[u8; 32] {
        &self.key_id
    }

    /// Opens a `CiphertextForRecipient`. The plaintext is zeroized when dropped.
    pub fn open(
        &self,
        ciphertext_for_recipient: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RecipientError> {
        let envelope = parse_envelope(ciphertext_for_recipient)?;
        if let RecipientId::SubjectKeyIdentifier(ski) = &envelope.recipient
            && ski.as_slice() != self.key_id
        {
            return Err(RecipientError::WrongRecipient {
                expected: hex(&self.key_id),
                actual: hex(ski),
            });
        }
        let mut cek_buffer = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let cek = self
            .key
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &envelope.encrypted_key,
                &mut cek_buffer,
                None,
            )
            .map_err(|_| RecipientError::KeyDecryption)?;
        if cek.len() != 32 {
            return Err(RecipientError::ContentKeyLength(cek.len()));
        }
        let cipher_key =
            UnboundCipherKey::new(&AES_256, cek).map_err(|_| RecipientError::ContentDecryption)?;
        let decrypting = PaddedBlockDecryptingKey::cbc_pkcs7(cipher_key)
            .map_err(|_| RecipientError::ContentDecryption)?;
        let mut buffer = Zeroizing::new(envelope.encrypted_content);
        let plaintext = decrypting
            .decrypt(&mut buffer, DecryptionContext::Iv128(envelope.iv.into()))
            .map_err(|_| RecipientError::ContentDecryption)?;
        Ok(Zeroizing::new(plaintext.to_vec()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        let full = format!(
            "{}/../testdata/fixtures/kms-recipient/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    fn fixture_key(dir: &str) -> RecipientKey {
        RecipientKey::from_pkcs1(&fixture(&format!("{dir}/recipient-rsa2048.pkcs1.der"))).unwrap()
    }

    #[test]
    fn opens_the_real_kms_ber_envelope() {
        let key = fixture_key("real-kms");
        let plaintext = key
            .open(&fixture("real-kms/ciphertext-for-recipient.ber"))
            .unwrap();
        assert_eq!(plaintext.as_slice(), fixture("real-kms/plaintext.bin"));
    }

    #[test]
    fn opens_the_openssl_der_envelope() {
        let key = fixture_key("openssl-der");
        let plaintext = key
            .open(&fixture("openssl-der/ciphertext-for-recipient.der"))
            .unwrap();
        assert_eq!(plaintext.as_slice(), fixture("openssl-der/plaintext.bin"));
    }

    #[test]
    fn another_key_cannot_open_them() {
        let stranger = RecipientKey::generate().unwrap();
        assert!(matches!(
            stranger.open(&fixture("real-kms/ciphertext-for-recipient.ber")),
            Err(RecipientError::WrongRecipient { .. })
        ));
        // No SKI to compare in the DER one: OAEP itself refuses.
        assert!(matches!(
            stranger.open(&fixture("openssl-der/ciphertext-for-recipient.der")),
            Err(RecipientError::KeyDecryption)
        ));
    }

    #[test]
    fn tampered_content_is_refused() {
        let key = fixture_key("openssl-der");
        let mut envelope = fixture("openssl-der/ciphertext-for-recipient.der");
        let last = envelope.len() - 1;
        envelope[last] ^= 0x01; // last byte of the padded ciphertext block
        assert!(key.open(&envelope).is_err());
        let mut envelope = fixture("openssl-der/ciphertext-for-recipient.der");
        envelope[200] ^= 0x01; // inside the RSA-encrypted content key
        assert!(matches!(
            key.open(&envelope),
            Err(RecipientError::KeyDecryption)
        ));
    }

    #[test]
    fn generated_keys_are_rsa_2048_with_a_der_spki() {
        let key = RecipientKey::generate().unwrap();
        assert_eq!(key.public_key_der()[0], 0x30);
        assert!(key.public_key_der().len() > 290);
        let debug = format!("{key:?}");
        assert!(debug.contains("subject_key_id") && debug.len() < 200);
    }
}
