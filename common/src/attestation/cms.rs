//! The CMS `EnvelopedData` (RFC 5652) that KMS returns as `CiphertextForRecipient`:
//! one `KeyTransRecipientInfo` (RSAES-OAEP with SHA-256 and MGF1-SHA-256) and content
//! encrypted with AES-256-CBC. Real KMS sends BER with indefinite lengths and a
//! subjectKeyIdentifier `rid`; other emitters send DER with issuerAndSerialNumber.
//! Both parse here. This module only takes the envelope apart; the enclave decrypts.

use crate::attestation::ber::{
    BerError, CONSTRUCTED, Element, Reader, TAG_INTEGER, TAG_NULL, TAG_OCTET_STRING, TAG_OID,
    TAG_SEQUENCE, TAG_SET, oid,
};

/// The largest envelope accepted: KMS's are well under 1 KiB for a data key or seed.
pub const MAX_ENVELOPE_LEN: usize = 64 * 1024;

/// Why a CMS envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmsError {
    /// The BER underneath is malformed.
    #[error("malformed CMS envelope: {0}")]
    Ber(#[from] BerError),
    /// The envelope is longer than [`MAX_ENVELOPE_LEN`]: `actual` bytes, `max` allowed.
    #[error("envelope of {actual} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Bytes given.
        actual: usize,
        /// Most bytes accepted.
        max: usize,
    },
    /// The BER is well formed but is not the CMS structure, or uses algorithms other than
    /// the ones accepted here (see the module documentation).
    #[error("expected {expected}, found {found}")]
    Unexpected {
        /// What was required at this point, e.g. `rsaesOaep` or `exactly one recipient`.
        expected: &'static str,
        /// What the envelope had instead.
        found: String,
    },
}

/// How the recipient was identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientId {
    /// SHA-256 of the recipient's DER SubjectPublicKeyInfo, in real KMS envelopes.
    SubjectKeyIdentifier(Vec<u8>),
    /// The DER of an IssuerAndSerialNumber (openssl, LocalStack).
    IssuerAndSerialNumber(Vec<u8>),
}

/// The parts of an envelope needed to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The `rid` of the envelope's single KeyTransRecipientInfo.
    pub recipient: RecipientId,
    /// RSAES-OAEP(SHA-256, MGF1-SHA-256) encryption of the content-encryption key.
    pub encrypted_key: Vec<u8>,
    /// AES-256-CBC IV.
    pub iv: [u8; 16],
    /// AES-256-CBC ciphertext with PKCS#7 padding.
    pub encrypted_content: Vec<u8>,
}

/// OID 1.2.840.113549.1.7.3, id-envelopedData: the `ContentInfo` content type.
pub fn oid_enveloped_data() -> Vec<u8> {
    oid(&[1, 2, 840, 113549, 1, 7, 3])
}
/// OID 1.2.840.113549.1.7.1, id-data: the `EncryptedContentInfo` content type.
pub fn oid_data() -> Vec<u8> {
    oid(&[1, 2, 840, 113549, 1, 7, 1])
}
/// OID 1.2.840.113549.1.1.7, id-RSAES-OAEP: the key encryption algorithm.
pub fn oid_rsaes_oaep() -> Vec<u8> {
    oid(&[1, 2, 840, 113549, 1, 1, 7])
}
/// OID 2.16.840.1.101.3.4.2.1, id-sha256: the OAEP hash and the MGF1 hash.
pub fn oid_sha256() -> Vec<u8> {
    oid(&[2, 16, 840, 1, 101, 3, 4, 2, 1])
}
/// OID 1.2.840.113549.1.1.8, id-mgf1: the OAEP mask generation function.
pub fn oid_mgf1() -> Vec<u8> {
    oid(&[1, 2, 840, 113549, 1, 1, 8])
}
/// OID 2.16.840.1.101.3.4.1.42, id-aes256-CBC: the content encryption algorithm.
pub fn oid_aes256_cbc() -> Vec<u8> {
    oid(&[2, 16, 840, 1, 101, 3, 4, 1, 42])
}

const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
const CONTEXT_1_CONSTRUCTED: u8 = 0xa1;
const CONTEXT_0_PRIMITIVE: u8 = 0x80;

fn unexpected(expected: &'static str, found: impl Into<String>) -> CmsError {
    CmsError::Unexpected {
        expected,
        found: found.into(),
    }
}

fn expect_oid(element: Element<'_>, want: &[u8], name: &'static str) -> Result<(), CmsError> {
    let element = element.expect(TAG_OID, "OBJECT IDENTIFIER")?;
    if element.content != want {
        return Err(unexpected(name, format!("OID {:02x?}", element.content)));
    }
    Ok(())
}

/// Checks `AlgorithmIdentifier { rsaesOaep, RSAES-OAEP-params }` names SHA-256 and
/// MGF1-SHA-256 with the default (empty) label.
fn check_oaep(algorithm: Element<'_>) -> Result<(), CmsError> {
    let mut parts = algorithm
        .expect(TAG_SEQUENCE, "AlgorithmIdentifier")?
        .children();
    expect_oid(
        parts.required("key encryption OID")?,
        &oid_rsaes_oaep(),
        "rsaesOaep",
    )?;
    let params = parts
        .required("RSAES-OAEP parameters")?
        .expect(TAG_SEQUENCE, "RSAES-OAEP-params")?;
    let (mut hash_ok, mut mgf_ok) = (false, false);
    let mut fields = params.children();
    while let Some(field) = fields.next_element()? {
        let mut inner = field.children();
        let algorithm = inner
            .required("algorithm")?
            .expect(TAG_SEQUENCE, "AlgorithmIdentifier")?;
        let mut alg = algorithm.children();
        match field.tag {
            CONTEXT_0_CONSTRUCTED => {
                expect_oid(
                    alg.required("hash OID")?,
                    &oid_sha256(),
                    "SHA-256 OAEP hash",
                )?;
                hash_ok = true;
            }
            CONTEXT_1_CONSTRUCTED => {
                expect_oid(alg.required("MGF OID")?, &oid_mgf1(), "MGF1")?;
                let mgf_hash = alg
                    .required("MGF1 hash")?
                    .expect(TAG_SEQUENCE, "AlgorithmIdentifier")?;
                expect_oid(
                    mgf_hash.children().required("MGF1 hash OID")?,
                    &oid_sha256(),
                    "MGF1-SHA-256",
                )?;
                mgf_ok = true;
            }
            other => {
                return Err(unexpected(
                    "no OAEP label (pSourceFunc)",
                    format!("parameter tag 0x{other:02x}"),
                ));
            }
        }
        if let Some(extra) = alg.next_element()?
            && extra.tag != TAG_NULL
        {
            return Err(unexpected(
                "NULL algorithm parameters",
                format!("tag 0x{:02x}", extra.tag),
            ));
        }
    }
    // Absent fields mean SHA-1 defaults, which KMS never uses: refuse them.
    if !(hash_ok && mgf_ok) {
        return Err(unexpected(
            "explicit SHA-256 hash and MGF1-SHA-256",
            "SHA-1 defaults",
        ));
    }
    Ok(())
}

/// Takes apart a `ContentInfo` holding `EnvelopedData`, in BER or DER, of at most
/// [`MAX_ENVELOPE_LEN`] bytes. It accepts exactly one KeyTransRecipientInfo with
/// RSAES-OAEP (SHA-256, MGF1-SHA-256, no label) and AES-256-CBC content with a 16-byte
/// IV and whole blocks of ciphertext. Nothing is decrypted here.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope, CmsError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(CmsError::TooLarge {
            actual: bytes.len(),
            max: MAX_ENVELOPE_LEN,
        });
    }
    let mut top = Reader::new(bytes);
    let content_info = top
        .required("ContentInfo")?
        .expect(TAG_SEQUENCE, "ContentInfo")?;
    let mut ci = content_info.children();
    expect_oid(
        ci.required("content type")?,
        &oid_enveloped_data(),
        "envelopedData",
    )?;
    let explicit = ci
        .required("content")?
        .expect(CONTEXT_0_CONSTRUCTED, "[0] EXPLICIT content")?;
    let enveloped = explicit
        .children()
        .required("EnvelopedData")?
        .expect(TAG_SEQUENCE, "EnvelopedData")?;
    let mut ed = enveloped.children();
    ed.required("version")?.expect(TAG_INTEGER, "version")?;
    let mut next = ed.required("recipientInfos")?;
    if next.tag == CONTEXT_0_CONSTRUCTED {
        // originatorInfo: not used by key transport; skip it.
        next = ed.required("recipientInfos")?;
    }
    let recipients = next.expect(TAG_SET, "SET OF RecipientInfo")?;
    let mut infos = recipients.children();
    let ktri = infos
        .required("RecipientInfo")?
        .expect(TAG_SEQUENCE, "KeyTransRecipientInfo")?;
    if infos.next_element()?.is_some() {
        return Err(unexpected("exactly one recipient", "several"));
    }
    let mut kt = ktri.children();
    kt.required("version")?.expect(TAG_INTEGER, "version")?;
    let rid = kt.required("rid")?;
    let recipient = match rid.tag {
        CONTEXT_0_PRIMITIVE => RecipientId::SubjectKeyIdentifier(rid.content.to_vec()),
        TAG_SEQUENCE => RecipientId::IssuerAndSerialNumber(rid.content.to_vec()),
        other => return Err(unexpected("rid", format!("tag 0x{other:02x}"))),
    };
    check_oaep(kt.required("keyEncryptionAlgorithm")?)?;
    let encrypted_key = kt
        .required("encryptedKey")?
        .expect(TAG_OCTET_STRING, "encryptedKey")?
        .string_bytes(1024)?;

    let eci = ed
        .required("encryptedContentInfo")?
        .expect(TAG_SEQUENCE, "EncryptedContentInfo")?;
    let mut eci = eci.children();
    expect_oid(eci.required("content type")?, &oid_data(), "id-data")?;
    let algorithm = eci
        .required("contentEncryptionAlgorithm")?
        .expect(TAG_SEQUENCE, "AlgorithmIdentifier")?;
    let mut alg = algorithm.children();
    expect_oid(
        alg.required("content encryption OID")?,
        &oid_aes256_cbc(),
        "aes256-CBC",
    )?;
    let iv_bytes = alg
        .required("IV")?
        .expect(TAG_OCTET_STRING, "IV")?
        .string_bytes(16)?;
    let iv: [u8; 16] = iv_bytes
        .as_slice()
        .try_into()
        .map_err(|_| unexpected("16-byte IV", format!("{} bytes", iv_bytes.len())))?;
    let content = eci.required("encryptedContent")?;
    if content.tag != CONTEXT_0_PRIMITIVE && content.tag != (CONTEXT_0_PRIMITIVE | CONSTRUCTED) {
        return Err(unexpected(
            "[0] IMPLICIT encryptedContent",
            format!("tag 0x{:02x}", content.tag),
        ));
    }
    let encrypted_content = content.string_bytes(MAX_ENVELOPE_LEN)?;
    if encrypted_content.is_empty() || encrypted_content.len() % 16 != 0 {
        return Err(unexpected(
            "whole AES blocks of ciphertext",
            format!("{} bytes", encrypted_content.len()),
        ));
    }
    Ok(Envelope {
        recipient,
        encrypted_key,
        iv,
        encrypted_content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        let full = format!(
            "{}/../testdata/fixtures/kms-recipient/{path}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    #[test]
    fn real_kms_ber_envelope_parses() {
        let envelope = parse_envelope(&fixture("real-kms/ciphertext-for-recipient.ber")).unwrap();
        match &envelope.recipient {
            RecipientId::SubjectKeyIdentifier(ski) => assert_eq!(ski.len(), 32),
            other @ RecipientId::IssuerAndSerialNumber(_) => {
                panic!("expected an SKI, got {other:?}")
            }
        }
        assert_eq!(envelope.encrypted_key.len(), 256);
        assert_eq!(envelope.iv[..4], [0xef, 0xa3, 0x1e, 0x80]);
        assert_eq!(envelope.encrypted_content.len(), 160);
    }

    #[test]
    fn openssl_der_envelope_parses() {
        let envelope =
            parse_envelope(&fixture("openssl-der/ciphertext-for-recipient.der")).unwrap();
        assert!(matches!(
            envelope.recipient,
            RecipientId::IssuerAndSerialNumber(_)
        ));
        assert_eq!(envelope.encrypted_key.len(), 256);
        assert_eq!(envelope.encrypted_content.len(), 48);
    }

    #[test]
    fn truncations_and_bit_flips_never_panic() {
        let good = fixture("real-kms/ciphertext-for-recipient.ber");
        for cut in 0..good.len() {
            assert!(
                parse_envelope(&good[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x41;
            let _ = parse_envelope(&flipped);
        }
    }
}
