//! KMS's `CiphertextForRecipient` (BER/DER CMS EnvelopedData): the parser and the
//! recipient key that opens it, with the key of the real-KMS fixture. No panic; a
//! plaintext comes out only of an envelope that parses.
#![no_main]
// A panic is how a fuzz target reports a broken property.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use common::attestation::cms::parse_envelope;
use enclave::kms::recipient::RecipientKey;
use libfuzzer_sys::fuzz_target;
use signer_fuzz::fixtures;

fuzz_target!(|data: &[u8]| {
    static KEY: OnceLock<RecipientKey> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        RecipientKey::from_pkcs1(fixtures::KMS_RECIPIENT_KEY_PKCS1).expect("the fixture key")
    });
    let parsed = parse_envelope(data);
    if key.open(data).is_ok() {
        assert!(parsed.is_ok(), "opened an envelope that does not parse");
    }
});
