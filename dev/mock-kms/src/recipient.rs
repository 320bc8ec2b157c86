//! Builds a `CiphertextForRecipient` the way real KMS shapes it: a CMS EnvelopedData
//! (RFC 5652) with one KeyTransRecipientInfo identified by subjectKeyIdentifier =
//! SHA-256 of the recipient's SubjectPublicKeyInfo, RSAES-OAEP-SHA256 key transport and
//! AES-256-CBC content. Real KMS emits BER with indefinite lengths; this emits DER,
//! which every BER reader accepts.

use aws_lc_rs::cipher::{AES_256, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use common::attestation::cms::{
    oid_aes256_cbc, oid_data, oid_enveloped_data, oid_mgf1, oid_rsaes_oaep, oid_sha256,
};
use rand::RngCore;
use zeroize::Zeroizing;

/// Smallest recipient key accepted; KMS requires RSA-2048 or larger.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted, so a hostile document cannot make the mock do huge RSA work.
pub const MAX_RSA_BITS: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipientError {
    #[error(
        "recipient public key refused ({0}); expected the DER SubjectPublicKeyInfo of an RSA key of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits"
    )]
    Key(String),
    #[error("envelope encryption failed")]
    Crypto,
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

/// Checks `spki` is an acceptable recipient key and returns it for encryption.
pub fn recipient_key(spki: &[u8]) -> Result<PublicEncryptingKey, RecipientError> {
    let key =
        PublicEncryptingKey::from_der(spki).map_err(|e| RecipientError::Key(e.to_string()))?;
    // aws-lc-rs enforces the same bounds today; say it here rather than rely on that.
    let bits = key.key_size_bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(RecipientError::Key(format!("{bits} bits")));
    }
    Ok(key)
}

/// Seals `plaintext` to the RSA key whose DER SubjectPublicKeyInfo is `spki`.
pub fn envelope(spki: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, RecipientError> {
    let oaep =
        OaepPublicEncryptingKey::new(recipient_key(spki)?).map_err(|_| RecipientError::Crypto)?;
    let mut cek = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(cek.as_mut());
    let mut wrapped = vec![0u8; oaep.ciphertext_size()];
    let wrapped = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, cek.as_ref(), &mut wrapped, None)
        .map_err(|_| RecipientError::Crypto)?
        .to_vec();
    let cbc = UnboundCipherKey::new(&AES_256, cek.as_ref())
        .and_then(PaddedBlockEncryptingKey::cbc_pkcs7)
        .map_err(|_| RecipientError::Crypto)?;
    let mut content = plaintext.to_vec();
    // `encrypt` draws a random IV and hands it back in the decryption context.
    let context = cbc
        .encrypt(&mut content)
        .map_err(|_| RecipientError::Crypto)?;
    let iv: &[u8] = (&context).try_into().map_err(|_| RecipientError::Crypto)?;

    let null = [0x05, 0x00];
    let sha256 = seq(&[&der(0x06, &oid_sha256()), &null]);
    let oaep_params = seq(&[
        &der(0xa0, &sha256),
        &der(0xa1, &seq(&[&der(0x06, &oid_mgf1()), &sha256])),
    ]);
    let ski = digest(&SHA256, spki);
    let ktri = seq(&[
        &der(0x02, &[2]),
        &der(0x80, ski.as_ref()),
        &seq(&[&der(0x06, &oid_rsaes_oaep()), &oaep_params]),
        &der(0x04, &wrapped),
    ]);
    let eci = seq(&[
        &der(0x06, &oid_data()),
        &seq(&[&der(0x06, &oid_aes256_cbc()), &der(0x04, iv)]),
        &der(0x80, &content),
    ]);
    let enveloped = seq(&[&der(0x02, &[2]), &der(0x31, &ktri), &eci]);
    Ok(seq(&[
        &der(0x06, &oid_enveloped_data()),
        &der(0xa0, &enveloped),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey};
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};
    use common::attestation::cms::{RecipientId, parse_envelope};

    /// Opens an envelope the way the enclave will; shared with the server tests.
    pub(crate) fn open(private: &PrivateDecryptingKey, envelope: &[u8]) -> Vec<u8> {
        let parsed = parse_envelope(envelope).unwrap();
        let oaep = OaepPrivateDecryptingKey::new(private.clone()).unwrap();
        let mut cek = vec![0u8; oaep.min_output_size()];
        let cek = oaep
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &parsed.encrypted_key,
                &mut cek,
                None,
            )
            .unwrap();
        let key =
            PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, cek).unwrap())
                .unwrap();
        let mut content = parsed.encrypted_content.clone();
        key.decrypt(&mut content, DecryptionContext::Iv128(parsed.iv.into()))
            .unwrap()
            .to_vec()
    }

    #[test]
    fn round_trips_through_the_cms_parser_and_names_the_key_by_spki_hash() {
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let spki = private.public_key().as_der().unwrap();
        for plaintext in [&b""[..], b"S-seed", &[7u8; 4096]] {
            let sealed = envelope(spki.as_ref(), plaintext).unwrap();
            assert_eq!(open(&private, &sealed), plaintext);
            let parsed = parse_envelope(&sealed).unwrap();
            assert_eq!(
                parsed.recipient,
                RecipientId::SubjectKeyIdentifier(digest(&SHA256, spki.as_ref()).as_ref().to_vec())
            );
        }
    }

    #[test]
    fn refuses_keys_that_are_not_rsa_2048_or_larger() {
        let refused = |spki: &[u8]| matches!(envelope(spki, b"x"), Err(RecipientError::Key(_)));
        assert!(refused(b"not a key"));
        // A well-formed 1024-bit RSA SubjectPublicKeyInfo (odd modulus, e = 65537).
        let mut modulus = vec![0x00, 0xc5];
        modulus.extend([0x5a; 126]);
        modulus.push(0x01);
        let rsa_key = seq(&[&der(0x02, &modulus), &der(0x02, &[1, 0, 1])]);
        let mut bits = vec![0];
        bits.extend(rsa_key);
        let rsa_oid = common::attestation::ber::oid(&[1, 2, 840, 113549, 1, 1, 1]);
        let small = seq(&[&seq(&[&der(0x06, &rsa_oid), &[5, 0]]), &der(0x03, &bits)]);
        assert!(refused(&small));
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let ec_spki = aws_lc_rs::signature::KeyPair::public_key(&ec)
            .as_der()
            .unwrap();
        assert!(refused(ec_spki.as_ref()));
    }
}
