//! Transaction envelope XDR through decoding, hashing, signer discovery and the
//! signing policy, as the enclave runs them on every request: no panic on any
//! envelope, and decoding is canonical (what decodes re-encodes to the same bytes).
#![no_main]
// A panic is how a fuzz target reports a broken property.
#![allow(clippy::expect_used, clippy::panic)]

use common::stellar::envelope::{
    decode_envelope, encode_envelope, network_id, required_signers, transaction_hash,
};
use common::stellar::signing_policy::{SignatureRequest, SigningPolicySettings};
use libfuzzer_sys::fuzz_target;
use signer_fuzz::{DISTRIBUTION_SEED, NETWORK, public_key};

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = decode_envelope(data) else {
        return;
    };
    let encoded = encode_envelope(&envelope).expect("a decoded envelope encodes");
    assert_eq!(encoded, data, "XDR decoding is not canonical");
    let network = network_id(NETWORK);
    let _hash = transaction_hash(&envelope, network);
    let distribution = public_key(&DISTRIBUTION_SEED);
    let policy = SigningPolicySettings::default()
        .signing_policy(distribution)
        .expect("the default policy");
    let mut signers = required_signers(&envelope);
    signers.push(distribution);
    let request = SignatureRequest {
        envelope: &envelope,
        signers: &signers,
        now_unix: 1_700_000_000,
        network_id: network,
    };
    let mut distribution_may_sign = true;
    for signer in &signers {
        let verdict = policy.check(&request, signer);
        if *signer == distribution {
            distribution_may_sign &= verdict.is_ok();
        }
    }
    let (fee, _sponsored) = policy.distribution_spend(&request);
    if distribution_may_sign {
        assert!(
            fee >= 0,
            "a signable transaction lowers the fee budget: {fee}"
        );
    }
});
