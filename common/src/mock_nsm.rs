//! A mock NSM for local development and tests (cargo feature `mock`, never in a
//! production enclave): it issues attestation documents in the real format (untagged
//! COSE_Sign1, ES384, the NSM's CBOR payload with `cabundle` root first) from a
//! locally generated P-384 CA chain, with PCR values chosen by the caller so tests can
//! present "another build".

use std::collections::BTreeMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
use ciborium::value::Value;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
};
use time::{Duration, OffsetDateTime};

use crate::attestation::document::{PROTECTED_ES384, sig_structure};

/// Marks mock builds; a test greps the production enclave binary for it.
pub const MOCK_NSM_MARKER: &str = "MOCK-NSM-NOT-FOR-PRODUCTION";

/// Why the mock CA or the mock NSM failed.
#[derive(Debug, thiserror::Error)]
pub enum MockNsmError {
    /// rcgen could not generate, parse or sign a certificate or key pair.
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A key or CA-file problem: the leaf key could not be loaded or sign, or the CA
    /// files could not be read, written or converted; the text says which.
    #[error("signing key: {0}")]
    Key(String),
    /// The document payload or its COSE_Sign1 could not be encoded as CBOR.
    #[error("CBOR encoding: {0}")]
    Cbor(String),
}

/// The mock CA: its root certificate is what a mock KMS trusts.
pub struct MockCa {
    root_der: Vec<u8>,
    root_pem: String,
    intermediate_der: Vec<u8>,
    intermediate: Issuer<'static, KeyPair>,
}

fn params(
    cn: &str,
    ca: IsCa,
    usages: Vec<KeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = ca;
    p.key_usages = usages;
    p.not_before = not_before;
    p.not_after = not_after;
    Ok(p)
}

impl MockCa {
    /// A fresh root (10 years) and intermediate (1 year).
    pub fn generate() -> Result<MockCa, MockNsmError> {
        Ok(Self::generate_with_keys()?.0)
    }

    /// The CA, the root key PEM, the intermediate key PEM and the intermediate PEM.
    fn generate_with_keys() -> Result<(MockCa, String, String, String), MockNsmError> {
        use KeyUsagePurpose::{CrlSign, DigitalSignature, KeyCertSign};
        let now = OffsetDateTime::now_utc();
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let root_params = params(
            "mock.nitro-enclaves",
            IsCa::Ca(BasicConstraints::Unconstrained),
            vec![KeyCertSign, CrlSign, DigitalSignature],
            now - Duration::days(1),
            now + Duration::days(3650),
        )?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let int_params = params(
            "mock-intermediate.nitro-enclaves",
            IsCa::Ca(BasicConstraints::Constrained(0)),
            vec![KeyCertSign, CrlSign, DigitalSignature],
            now - Duration::days(1),
            now + Duration::days(365),
        )?;
        let int_cert = int_params.signed_by(&int_key, &root)?;
        let root_key_pem = root.key().serialize_pem();
        let int_key_pem = int_key.serialize_pem();
        let ca = MockCa {
            root_der: root_cert.der().to_vec(),
            root_pem: root_cert.pem(),
            intermediate_der: int_cert.der().to_vec(),
            intermediate: Issuer::new(int_params, int_key),
        };
        Ok((ca, root_key_pem, int_key_pem, int_cert.pem()))
    }

    /// Loads the CA kept in `dir`, or creates it there (keys mode 0600). The files are
    /// `root.pem`, `root.key.pem`, `intermediate.pem` and `intermediate.key.pem`.
    pub fn load_or_generate(dir: &std::path::Path) -> Result<MockCa, MockNsmError> {
        let io = |e: std::io::Error| MockNsmError::Key(format!("{}: {e}", dir.display()));
        let path = |name: &str| dir.join(name);
        if path("intermediate.key.pem").exists() {
            let read = |name: &str| std::fs::read_to_string(path(name)).map_err(io);
            let root_pem = read("root.pem")?;
            let intermediate_pem = read("intermediate.pem")?;
            let int_key = KeyPair::from_pem(&read("intermediate.key.pem")?)?;
            let intermediate = Issuer::from_ca_cert_pem(&intermediate_pem, int_key)?;
            let der = |pem: &str| {
                crate::attestation::document::certificate_der_from_pem(pem.as_bytes())
                    .map_err(|e| MockNsmError::Key(e.to_string()))
            };
            return Ok(MockCa {
                root_der: der(&root_pem)?,
                root_pem,
                intermediate_der: der(&intermediate_pem)?,
                intermediate,
            });
        }
        let (ca, root_key_pem, int_key_pem, int_pem) = Self::generate_with_keys()?;
        std::fs::create_dir_all(dir).map_err(io)?;
        let write = |name: &str, text: &str, secret: bool| -> Result<(), MockNsmError> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(if secret { 0o600 } else { 0o644 })
                .open(path(name))
                .map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)
        };
        write("root.pem", &ca.root_pem, false)?;
        write("root.key.pem", &root_key_pem, true)?;
        write("intermediate.pem", &int_pem, false)?;
        // Last: its presence marks a complete CA.
        write("intermediate.key.pem", &int_key_pem, true)?;
        Ok(ca)
    }

    /// The root certificate, DER: the root to pin when verifying this CA's documents.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A mock NSM whose documents carry `pcrs` (index → 48 bytes; unnamed indices of
    /// 0..16 are zero, as on real hardware).
    pub fn nsm(&self, pcrs: &BTreeMap<u8, [u8; 48]>) -> Result<MockNsm, MockNsmError> {
        let now = OffsetDateTime::now_utc();
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let leaf_params = params(
            "i-00000000000000000-enc0000000000000000.mock",
            IsCa::ExplicitNoCa,
            vec![KeyUsagePurpose::DigitalSignature],
            now - Duration::minutes(5),
            now + Duration::days(30),
        )?;
        let leaf_cert = leaf_params.signed_by(&leaf_key, &self.intermediate)?;
        let signer =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &leaf_key.serialize_der())
                .map_err(|e| MockNsmError::Key(e.to_string()))?;
        let mut all = BTreeMap::new();
        for index in 0..16u8 {
            all.insert(index, pcrs.get(&index).copied().unwrap_or([0u8; 48]));
        }
        Ok(MockNsm {
            cabundle: vec![self.root_der.clone(), self.intermediate_der.clone()],
            leaf_der: leaf_cert.der().to_vec(),
            signer,
            pcrs: all,
        })
    }
}

/// A mock NSM: a leaf certificate (30 days) under the mock CA, its P-384 signing key
/// and fixed PCRs. Its `Debug` output is [`MOCK_NSM_MARKER`].
pub struct MockNsm {
    cabundle: Vec<Vec<u8>>,
    leaf_der: Vec<u8>,
    signer: EcdsaKeyPair,
    pcrs: BTreeMap<u8, [u8; 48]>,
}

impl std::fmt::Debug for MockNsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MOCK_NSM_MARKER)
    }
}

impl MockNsm {
    /// An attestation document, like the NSM's answer to `Request::Attestation`.
    pub fn attest(
        &self,
        public_key: Option<&[u8]>,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
    ) -> Result<Vec<u8>, MockNsmError> {
        let text = |s: &str| Value::Text(s.into());
        let optional = |b: Option<&[u8]>| b.map_or(Value::Null, |b| Value::Bytes(b.to_vec()));
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let payload = Value::Map(vec![
            (
                text("module_id"),
                text("i-00000000000000000-enc0000000000000000"),
            ),
            (text("digest"), text("SHA384")),
            (text("timestamp"), Value::Integer(timestamp.into())),
            (
                text("pcrs"),
                Value::Map(
                    self.pcrs
                        .iter()
                        .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.to_vec())))
                        .collect(),
                ),
            ),
            (text("certificate"), Value::Bytes(self.leaf_der.clone())),
            (
                text("cabundle"),
                Value::Array(self.cabundle.iter().cloned().map(Value::Bytes).collect()),
            ),
            (text("public_key"), optional(public_key)),
            (text("user_data"), optional(user_data)),
            (text("nonce"), optional(nonce)),
        ]);
        let mut payload_bytes = Vec::new();
        ciborium::into_writer(&payload, &mut payload_bytes)
            .map_err(|e| MockNsmError::Cbor(e.to_string()))?;
        let signature = self
            .signer
            .sign(
                &SystemRandom::new(),
                &sig_structure(&PROTECTED_ES384, &payload_bytes),
            )
            .map_err(|e| MockNsmError::Key(e.to_string()))?;
        let cose = Value::Array(vec![
            Value::Bytes(PROTECTED_ES384.to_vec()),
            Value::Map(vec![]),
            Value::Bytes(payload_bytes),
            Value::Bytes(signature.as_ref().to_vec()),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&cose, &mut out).map_err(|e| MockNsmError::Cbor(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::document::{AttestationError, verify};

    #[test]
    fn mock_documents_verify_against_the_mock_root_only() {
        let ca = MockCa::generate().unwrap();
        let pcrs = BTreeMap::from([(0u8, [0xaa; 48]), (1, [0xbb; 48]), (2, [0xcc; 48])]);
        let nsm = ca.nsm(&pcrs).unwrap();
        let document = nsm.attest(Some(b"spki"), None, Some(b"n")).unwrap();
        assert_eq!(document[0], 0x84, "untagged COSE_Sign1");
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        let verified = verify(&document, ca.root_der(), now).unwrap();
        assert_eq!(verified.pcr_hex(0).unwrap(), "aa".repeat(48));
        assert_eq!(verified.pcr_hex(2).unwrap(), "cc".repeat(48));
        assert_eq!(verified.pcr_hex(3).unwrap(), "00".repeat(48));
        assert_eq!(verified.public_key.as_deref(), Some(&b"spki"[..]));
        assert_eq!(verified.user_data, None);

        let dir = tempfile::tempdir().unwrap();
        let kept = MockCa::load_or_generate(dir.path()).unwrap();
        let reloaded = MockCa::load_or_generate(dir.path()).unwrap();
        assert_eq!(kept.root_der(), reloaded.root_der());
        let later = reloaded
            .nsm(&pcrs)
            .unwrap()
            .attest(None, None, None)
            .unwrap();
        verify(&later, kept.root_der(), now).unwrap();

        let other = MockCa::generate().unwrap();
        assert!(matches!(
            verify(&document, other.root_der(), now),
            Err(AttestationError::Chain(_))
        ));
    }
}
