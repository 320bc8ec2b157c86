//! Verification of AWS Nitro attestation documents: an untagged COSE_Sign1 (ES384)
//! whose CBOR payload carries the enclave's PCRs, its certificate and a CA bundle.
//!
//! [`verify`] checks the COSE signature with the leaf certificate's P-384 key, the
//! chain from the pinned root (`cabundle[0]` must be that root, byte for byte) down to
//! the leaf, every certificate's validity at the given time, CA and leaf constraints,
//! and size limits on every field. Time is a parameter, never read from the clock, so
//! callers decide what "now" means (tests verify "as of" a document's own time).
//!
//! A valid document proves only what the NSM measured: debug-mode enclaves produce
//! valid documents with all-zero PCRs, so PCR policy is a separate, later check.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use ciborium::value::Value;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA384,
    OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The NSM's response buffer is 12 KiB; allow some headroom, no more.
pub const MAX_DOCUMENT_LEN: usize = 16 * 1024;
/// COSE protected header `{1: -35}` (alg: ES384), the only one the NSM emits.
pub const PROTECTED_ES384: [u8; 4] = [0xa1, 0x01, 0x38, 0x22];
const MAX_CERT_LEN: usize = 1024;
const MAX_CABUNDLE: usize = 8;
const MAX_PUBLIC_KEY_LEN: usize = 1024;
const MAX_USER_DATA_LEN: usize = 512;
const CBOR_RECURSION_LIMIT: usize = 16;

/// Why an attestation document was refused. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// The document is longer than [`MAX_DOCUMENT_LEN`]: `actual` bytes, `max` allowed.
    #[error("attestation document of {actual} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Bytes given.
        actual: usize,
        /// Most bytes accepted.
        max: usize,
    },
    /// The COSE_Sign1 structure or its CBOR payload is not what the NSM emits; the text
    /// says which part.
    #[error("malformed attestation document: {0}")]
    Malformed(&'static str),
    /// The certificate chain does not run from the pinned root to the leaf, or one of its
    /// certificates is unusable (unparseable, not P-384, constraints); the text says which.
    #[error("certificate chain: {0}")]
    Chain(&'static str),
    /// A certificate of the chain, or the leaf, is not valid yet at the time checked.
    #[error("certificate {subject} is not valid until {not_before} (checked at {at})")]
    NotYetValid {
        /// The certificate's subject name.
        subject: String,
        /// Start of its validity window.
        not_before: i64,
        /// The time checked against.
        at: i64,
    },
    /// A certificate of the chain, or the leaf, has expired at the time checked.
    #[error("certificate {subject} expired at {not_after} (checked at {at})")]
    Expired {
        /// The certificate's subject name.
        subject: String,
        /// End of its validity window.
        not_after: i64,
        /// The time checked against.
        at: i64,
    },
    /// The COSE signature does not verify with the leaf certificate's key.
    #[error("the COSE signature does not verify with the leaf certificate's key")]
    Signature,
}

use AttestationError::{Chain, Malformed};

/// What a verified document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDocument {
    /// The enclave's module id, as the NSM reports it (never empty).
    pub module_id: String,
    /// When the NSM issued the document, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// PCR index → 48-byte SHA-384 measurement.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The `public_key` the requester had put in the document, if any (at most 1 KiB).
    pub public_key: Option<Vec<u8>>,
    /// The `user_data` the requester had put in the document, if any (at most 512 bytes).
    pub user_data: Option<Vec<u8>>,
    /// The `nonce` the requester had put in the document, if any (at most 512 bytes).
    pub nonce: Option<Vec<u8>>,
    /// The leaf certificate's validity window, Unix seconds.
    pub leaf_not_before: i64,
    /// The end of the leaf certificate's validity window, Unix seconds.
    pub leaf_not_after: i64,
}

impl AttestationDocument {
    /// PCR `index` as lower-case hex, the form KMS policy conditions compare.
    pub fn pcr_hex(&self, index: u8) -> Option<String> {
        self.pcrs.get(&index).map(|v| crate::hex(v))
    }
}

fn cbor_decode(bytes: &[u8]) -> Result<Value, AttestationError> {
    let mut rest = bytes;
    let value: Value =
        ciborium::de::from_reader_with_recursion_limit(&mut rest, CBOR_RECURSION_LIMIT)
            .map_err(|_| Malformed("not valid CBOR"))?;
    if !rest.is_empty() {
        return Err(Malformed("trailing bytes after the CBOR item"));
    }
    Ok(value)
}

/// A CBOR head: major type and argument, in the shortest form (RFC 8949 §3).
fn cbor_head(out: &mut Vec<u8>, major: u8, len: usize) {
    let m = major << 5;
    let be = (len as u64).to_be_bytes();
    match len {
        0..=23 => out.push(m | be[7]),
        24..=0xff => out.extend_from_slice(&[m | 0x18, be[7]]),
        0x100..=0xffff => {
            out.push(m | 0x19);
            out.extend_from_slice(&be[6..]);
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 0x1a);
            out.extend_from_slice(&be[4..]);
        }
        _ => {
            out.push(m | 0x1b);
            out.extend_from_slice(&be);
        }
    }
}

/// The COSE `Sig_structure` `["Signature1", protected, h'', payload]` (RFC 9052 §4.4):
/// the bytes the NSM signs.
pub fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + protected.len() + 24);
    out.push(0x84);
    out.push(0x6a);
    out.extend_from_slice(b"Signature1");
    cbor_head(&mut out, 2, protected.len());
    out.extend_from_slice(protected);
    out.push(0x40);
    cbor_head(&mut out, 2, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Verifies `document` against the pinned `root_der`, as of `now_unix` (seconds).
pub fn verify(
    document: &[u8],
    root_der: &[u8],
    now_unix: i64,
) -> Result<AttestationDocument, AttestationError> {
    if document.len() > MAX_DOCUMENT_LEN {
        return Err(AttestationError::TooLarge {
            actual: document.len(),
            max: MAX_DOCUMENT_LEN,
        });
    }
    let Value::Array(items) = cbor_decode(document)? else {
        return Err(Malformed("not an untagged COSE_Sign1 array"));
    };
    let items: [Value; 4] = items
        .try_into()
        .map_err(|_| Malformed("COSE_Sign1 must have 4 elements"))?;
    let [
        Value::Bytes(protected),
        Value::Map(unprotected),
        Value::Bytes(payload),
        Value::Bytes(cose_signature),
    ] = items
    else {
        return Err(Malformed("COSE_Sign1 element types"));
    };
    if protected != PROTECTED_ES384 {
        return Err(Malformed("protected header is not {alg: ES384}"));
    }
    if !unprotected.is_empty() || cose_signature.len() != 96 {
        return Err(Malformed("unprotected header or signature length"));
    }
    let fields = parse_payload(&payload)?;
    let leaf = parse_cert(&fields.certificate)?;
    verify_chain(&fields.cabundle, &leaf, root_der, now_unix)?;
    UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p384_point(&leaf)?)
        .verify(&sig_structure(&protected, &payload), &cose_signature)
        .map_err(|_| AttestationError::Signature)?;
    Ok(AttestationDocument {
        module_id: fields.module_id,
        timestamp_ms: fields.timestamp_ms,
        pcrs: fields.pcrs,
        public_key: fields.public_key,
        user_data: fields.user_data,
        nonce: fields.nonce,
        leaf_not_before: leaf.validity().not_before.timestamp(),
        leaf_not_after: leaf.validity().not_after.timestamp(),
    })
}

struct Payload {
    module_id: String,
    timestamp_ms: u64,
    pcrs: BTreeMap<u8, Vec<u8>>,
    certificate: Vec<u8>,
    cabundle: Vec<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), AttestationError> {
    // ciborium keeps duplicate map keys; a document with two PCR maps is not genuine.
    if slot.replace(value).is_some() {
        Err(Malformed("duplicate key"))
    } else {
        Ok(())
    }
}

fn optional_bytes(value: Value, max: usize) -> Result<Option<Vec<u8>>, AttestationError> {
    match value {
        Value::Null => Ok(None),
        Value::Bytes(b) if b.len() <= max => Ok(Some(b)),
        _ => Err(Malformed(
            "optional field is neither null nor bytes within its limit",
        )),
    }
}

fn parse_payload(bytes: &[u8]) -> Result<Payload, AttestationError> {
    let Value::Map(entries) = cbor_decode(bytes)? else {
        return Err(Malformed("payload is not a map"));
    };
    let (mut module_id, mut digest, mut timestamp, mut pcrs) = (None, None, None, None);
    let (mut certificate, mut cabundle) = (None, None);
    let (mut public_key, mut user_data, mut nonce) = (None, None, None);
    for (key, value) in entries {
        let Value::Text(key) = key else {
            return Err(Malformed("payload key is not text"));
        };
        match (key.as_str(), value) {
            ("module_id", Value::Text(s)) if !s.is_empty() => set_once(&mut module_id, s)?,
            ("digest", Value::Text(s)) => set_once(&mut digest, s)?,
            ("timestamp", Value::Integer(i)) => set_once(
                &mut timestamp,
                u64::try_from(i).map_err(|_| Malformed("timestamp"))?,
            )?,
            ("pcrs", Value::Map(m)) => set_once(&mut pcrs, parse_pcrs(m)?)?,
            ("certificate", Value::Bytes(b)) if (1..=MAX_CERT_LEN).contains(&b.len()) => {
                set_once(&mut certificate, b)?;
            }
            ("cabundle", Value::Array(a)) if (1..=MAX_CABUNDLE).contains(&a.len()) => {
                let certs = a
                    .into_iter()
                    .map(|v| match v {
                        Value::Bytes(b) if (1..=MAX_CERT_LEN).contains(&b.len()) => Ok(b),
                        _ => Err(Malformed("cabundle entry")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                set_once(&mut cabundle, certs)?;
            }
            ("public_key", v) => set_once(&mut public_key, optional_bytes(v, MAX_PUBLIC_KEY_LEN)?)?,
            ("user_data", v) => set_once(&mut user_data, optional_bytes(v, MAX_USER_DATA_LEN)?)?,
            ("nonce", v) => set_once(&mut nonce, optional_bytes(v, MAX_USER_DATA_LEN)?)?,
            _ => return Err(Malformed("unexpected payload key or value type")),
        }
    }
    if digest.as_deref() != Some("SHA384") {
        return Err(Malformed("digest is not SHA384"));
    }
    Ok(Payload {
        module_id: module_id.ok_or(Malformed("missing module_id"))?,
        timestamp_ms: timestamp
            .filter(|t| *t > 0)
            .ok_or(Malformed("missing timestamp"))?,
        pcrs: pcrs.ok_or(Malformed("missing pcrs"))?,
        certificate: certificate.ok_or(Malformed("missing certificate"))?,
        cabundle: cabundle.ok_or(Malformed("missing cabundle"))?,
        public_key: public_key.ok_or(Malformed("missing public_key"))?,
        user_data: user_data.ok_or(Malformed("missing user_data"))?,
        nonce: nonce.ok_or(Malformed("missing nonce"))?,
    })
}

fn parse_pcrs(entries: Vec<(Value, Value)>) -> Result<BTreeMap<u8, Vec<u8>>, AttestationError> {
    if !(1..=32).contains(&entries.len()) {
        return Err(Malformed("PCR count"));
    }
    let mut pcrs = BTreeMap::new();
    for (key, value) in entries {
        let (Value::Integer(index), Value::Bytes(measurement)) = (key, value) else {
            return Err(Malformed("PCR entry types"));
        };
        let index = u8::try_from(index)
            .ok()
            .filter(|i| *i < 32)
            .ok_or(Malformed("PCR index"))?;
        if measurement.len() != 48 || pcrs.insert(index, measurement).is_some() {
            return Err(Malformed("PCR length or duplicate index"));
        }
    }
    Ok(pcrs)
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, AttestationError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(Chain("unparseable certificate")),
    }
}

/// The certificate's P-384 public key as an uncompressed SEC1 point.
fn p384_point<'c>(cert: &'c X509Certificate<'_>) -> Result<&'c [u8], AttestationError> {
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let point: &[u8] = &spki.subject_public_key.data;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY
        || curve != Some(OID_NIST_EC_P384)
        || spki.subject_public_key.unused_bits != 0
        || point.len() != 97
        || point.first() != Some(&0x04)
    {
        return Err(Chain("certificate key is not P-384"));
    }
    Ok(point)
}

/// Checks `child`'s ECDSA-P384-SHA384 signature over its raw TBS bytes (never a
/// re-encoding) with `issuer`'s key, and that the names chain.
fn verify_signed_by(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), AttestationError> {
    let algorithm = &child.signature_algorithm;
    if algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA384
        || algorithm.parameters.is_some()
        || child.tbs_certificate.signature != *algorithm
        || child.signature_value.unused_bits != 0
    {
        return Err(Chain(
            "certificate signature algorithm is not ecdsa-with-SHA384",
        ));
    }
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(Chain("issuer name does not match the next certificate up"));
    }
    UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, p384_point(issuer)?)
        .verify(child.tbs_certificate.as_ref(), &child.signature_value.data)
        .map_err(|_| Chain("a certificate signature does not verify"))
}

fn check_time(cert: &X509Certificate<'_>, now: i64) -> Result<(), AttestationError> {
    let validity = cert.validity();
    let subject = || cert.subject().to_string();
    if now < validity.not_before.timestamp() {
        return Err(AttestationError::NotYetValid {
            subject: subject(),
            not_before: validity.not_before.timestamp(),
            at: now,
        });
    }
    if now > validity.not_after.timestamp() {
        return Err(AttestationError::Expired {
            subject: subject(),
            not_after: validity.not_after.timestamp(),
            at: now,
        });
    }
    Ok(())
}

/// `cas_below`: for a CA, how many CA certificates sit under it in the bundle; `None`
/// for the leaf.
fn check_extensions(
    cert: &X509Certificate<'_>,
    cas_below: Option<usize>,
) -> Result<(), AttestationError> {
    if cert.extensions().iter().any(|e| {
        e.critical && e.oid != OID_X509_EXT_BASIC_CONSTRAINTS && e.oid != OID_X509_EXT_KEY_USAGE
    }) {
        return Err(Chain("unknown critical extension"));
    }
    let basic = cert
        .basic_constraints()
        .map_err(|_| Chain("basicConstraints"))?;
    let usage = cert.key_usage().map_err(|_| Chain("keyUsage"))?;
    let ok = match cas_below {
        Some(below) => {
            basic.is_some_and(|b| {
                b.value.ca
                    && b.value
                        .path_len_constraint
                        .is_none_or(|limit| limit as usize >= below)
            }) && usage.is_some_and(|k| k.value.key_cert_sign())
        }
        None => {
            !basic.is_some_and(|b| b.value.ca) && usage.is_none_or(|k| k.value.digital_signature())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Chain("CA or leaf constraints violated"))
    }
}

fn verify_chain(
    cabundle: &[Vec<u8>],
    leaf: &X509Certificate<'_>,
    root_der: &[u8],
    now: i64,
) -> Result<(), AttestationError> {
    if cabundle.first().map(Vec::as_slice) != Some(root_der) {
        return Err(Chain("cabundle[0] is not the trusted root"));
    }
    let certs = cabundle
        .iter()
        .map(|der| parse_cert(der))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, cert) in certs.iter().enumerate() {
        check_time(cert, now)?;
        check_extensions(cert, Some(certs.len() - 1 - i))?;
        let issuer = if i == 0 { cert } else { &certs[i - 1] };
        verify_signed_by(cert, issuer)?;
    }
    check_time(leaf, now)?;
    check_extensions(leaf, None)?;
    verify_signed_by(leaf, certs.last().ok_or(Chain("empty cabundle"))?)
}

/// Reads a PEM certificate (e.g. the AWS Nitro root) into DER.
pub fn certificate_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, AttestationError> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|_| Chain("root certificate PEM"))?;
    if parsed.label != "CERTIFICATE" {
        return Err(Chain("root PEM is not a CERTIFICATE"));
    }
    Ok(parsed.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../testdata/fixtures/nitro-attestation/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn aws_root() -> Vec<u8> {
        certificate_der_from_pem(&fixture("aws-nitro-root.pem")).unwrap()
    }

    fn expected(doc: &str) -> serde_json::Value {
        let all: serde_json::Value = serde_json::from_slice(&fixture("expected.json")).unwrap();
        all[doc].clone()
    }

    use crate::hex;

    fn rfc3339_to_unix(text: &str) -> i64 {
        // "2022-07-06T17:18:22+00:00"
        let (date, time) = text.split_once('T').unwrap();
        let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
        let t: Vec<i64> = time[..8].split(':').map(|p| p.parse().unwrap()).collect();
        // Days from civil (Howard Hinnant's algorithm).
        let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]
    }

    fn check_fixture(name: &str) {
        let document = fixture(name);
        let want = expected(name);
        let at = want["timestamp_ms"].as_i64().unwrap() / 1000;
        let doc = verify(&document, &aws_root(), at).unwrap();
        assert_eq!(doc.module_id, want["module_id"]);
        assert_eq!(
            i64::try_from(doc.timestamp_ms).unwrap(),
            want["timestamp_ms"].as_i64().unwrap()
        );
        assert_eq!(
            doc.leaf_not_before,
            rfc3339_to_unix(want["leaf_not_before"].as_str().unwrap())
        );
        assert_eq!(
            doc.leaf_not_after,
            rfc3339_to_unix(want["leaf_not_after"].as_str().unwrap())
        );
        for (index, value) in want["pcrs"].as_object().unwrap() {
            assert_eq!(
                doc.pcr_hex(index.parse().unwrap()).unwrap(),
                value.as_str().unwrap()
            );
        }
        assert_eq!(
            doc.public_key.is_some(),
            want["has_public_key"].as_bool().unwrap()
        );
        assert_eq!(
            doc.user_data.as_deref().map(hex),
            want["user_data_hex"].as_str().map(str::to_string)
        );
        assert_eq!(
            doc.nonce.as_deref().map(hex),
            want["nonce_hex"].as_str().map(str::to_string)
        );

        // An hour after the leaf expired, the same document is refused.
        let late = doc.leaf_not_after + 3600;
        assert!(matches!(
            verify(&document, &aws_root(), late),
            Err(AttestationError::Expired { .. })
        ));
        // Before the leaf existed, too.
        assert!(matches!(
            verify(&document, &aws_root(), doc.leaf_not_before - 60),
            Err(AttestationError::NotYetValid { .. })
        ));
    }

    #[test]
    fn real_production_document_verifies_at_its_timestamp() {
        check_fixture("doc-2022-07-06-production.cbor");
    }

    #[test]
    fn real_debug_document_verifies_at_its_timestamp() {
        check_fixture("doc-2023-09-18-debug.cbor");
    }

    #[test]
    fn any_changed_byte_is_rejected() {
        let name = "doc-2022-07-06-production.cbor";
        let document = fixture(name);
        let at = expected(name)["timestamp_ms"].as_i64().unwrap() / 1000;
        let root = aws_root();
        // Every 7th byte (covers header, payload, certificates and signature) flipped.
        for i in (0..document.len()).step_by(7) {
            let mut tampered = document.clone();
            tampered[i] ^= 0x01;
            assert!(
                verify(&tampered, &root, at).is_err(),
                "byte {i} changed and still accepted"
            );
        }
        // A PCR byte in particular: the signature no longer covers it.
        let pcr0 = hex_decode(expected(name)["pcrs"]["0"].as_str().unwrap());
        let at_pcr = document
            .windows(pcr0.len())
            .position(|w| w == pcr0.as_slice())
            .unwrap();
        let mut tampered = document.clone();
        tampered[at_pcr] ^= 0xff;
        assert_eq!(
            verify(&tampered, &root, at).unwrap_err(),
            AttestationError::Signature
        );
        let mut longer = document.clone();
        longer.push(0);
        assert!(matches!(
            verify(&longer, &root, at),
            Err(AttestationError::Malformed(_))
        ));
    }

    #[test]
    fn another_root_is_refused() {
        let name = "doc-2023-09-18-debug.cbor";
        let document = fixture(name);
        let at = expected(name)["timestamp_ms"].as_i64().unwrap() / 1000;
        let mut other_root = aws_root();
        let last = other_root.len() - 1;
        other_root[last] ^= 1;
        assert!(matches!(
            verify(&document, &other_root, at),
            Err(AttestationError::Chain(_))
        ));
        assert!(matches!(
            verify(&vec![0u8; MAX_DOCUMENT_LEN + 1], &aws_root(), at),
            Err(AttestationError::TooLarge { .. })
        ));
    }

    fn hex_decode(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
