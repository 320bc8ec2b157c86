//! The Nitro attestation document verifier (COSE_Sign1, CBOR, the certificate chain
//! to the pinned AWS root): no panic on any document, and only the real documents'
//! signatures verify.
#![no_main]
// A panic is how a fuzz target reports a broken property.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use common::attestation::document::{certificate_der_from_pem, verify};
use libfuzzer_sys::fuzz_target;
use signer_fuzz::fixtures;

fuzz_target!(|data: &[u8]| {
    static ROOT_AND_PCR0: OnceLock<(Vec<u8>, Option<String>)> = OnceLock::new();
    let (root, real_pcr0) = ROOT_AND_PCR0.get_or_init(|| {
        let root = certificate_der_from_pem(fixtures::NITRO_ROOT_PEM).expect("the AWS Nitro root");
        let real = verify(
            fixtures::ATTESTATION_PRODUCTION,
            &root,
            fixtures::ATTESTATION_NOW_UNIX,
        )
        .expect("the production fixture verifies");
        (root, real.pcr_hex(0))
    });
    // Whatever the fuzzer makes, a document that verifies was signed by AWS: it can
    // only be the real one, with its PCR0.
    if let Ok(document) = verify(data, root, fixtures::ATTESTATION_NOW_UNIX) {
        assert_eq!(
            &document.pcr_hex(0),
            real_pcr0,
            "a forged document verified"
        );
    }
});
