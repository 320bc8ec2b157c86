//! The seed corpora reach what each target is there to fuzz: signing requests get
//! past the pre-KMS checks and are signed, the real AWS bytes verify and open, and
//! the dispatcher's KMS check holds on every seed. A corpus that stopped at the first
//! decoder would let a fuzz run pass while testing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use common::attestation::document::{certificate_der_from_pem, verify};
use common::wire::ErrorCode;
use common::wire::messages::Response;
use enclave::kms::recipient::RecipientKey;
use signer_fuzz::{FuzzEnclave, RequestInput, fixtures, seeds};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    seeds::corpora()
        .into_iter()
        .find_map(|(name, inputs)| (name == target).then_some(inputs))
        .unwrap_or_else(|| panic!("no corpus for {target}"))
}

#[test]
fn request_seeds_are_signed_refused_and_denied_by_kms() {
    let enclave = FuzzEnclave::get();
    let (mut signed, mut authorized, mut refused, mut kms_denied) = (0, 0, 0, 0);
    for input in corpus("enclave_request") {
        let input = RequestInput::split(&input).expect("a seed splits");
        let outcome = enclave.run(&input).expect("a seed is a request");
        match outcome.answer {
            Ok(Response::Signed { .. }) => signed += 1,
            Ok(Response::SorobanAuthorized { .. }) => authorized += 1,
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::PolicyViolation => refused += 1,
            Err(e) if outcome.kms_called && e.code == ErrorCode::KmsAccessDenied => {
                kms_denied += 1;
            }
            Err(_) => {}
        }
    }
    println!(
        "signed {signed}, authorized {authorized}, refused {refused}, KMS denied {kms_denied}"
    );
    assert!(signed >= 50, "only {signed} seeds signed");
    assert!(
        authorized >= 20,
        "only {authorized} Soroban seeds authorized"
    );
    assert!(refused >= 20, "only {refused} seeds refused by the policy");
    assert!(
        kms_denied >= 50,
        "only {kms_denied} seeds reached a KMS denial"
    );
}

#[test]
fn the_real_aws_bytes_verify_and_open() {
    let root = certificate_der_from_pem(fixtures::NITRO_ROOT_PEM).unwrap();
    let documents = corpus("attestation_document");
    assert!(verify(&documents[0], &root, fixtures::ATTESTATION_NOW_UNIX).is_ok());
    let key = RecipientKey::from_pkcs1(fixtures::KMS_RECIPIENT_KEY_PKCS1).unwrap();
    assert!(key.open(&corpus("cms_envelope")[0]).is_ok());
}

#[test]
fn every_frame_seed_holds_three_frames() {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;
    for stream in corpus("frame_decoder") {
        let mut codec = common::wire::frame::FrameCodec::new();
        let mut buffer = BytesMut::from(&stream[1..]);
        let mut frames = 0;
        while let Some(_frame) = codec.decode(&mut buffer).unwrap() {
            frames += 1;
        }
        assert_eq!(frames, 3);
    }
}
