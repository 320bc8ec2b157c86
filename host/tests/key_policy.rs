//! The shipped key-policy template, rendered by the renderer operators use, evaluated by
//! the mock KMS's policy engine: it admits exactly the measured builds, and nothing
//! without an attestation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use common::kms_key::KmsKeyArn;
use host::key_policy::{Measurements, TEMPLATE, Variant, render, render_iam};
use mock_kms::key_policy::{Effect, Policy, RequestContext};

const ROLE: &str = "arn:aws:iam::111122223333:role/signer-host";
const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn key() -> KmsKeyArn {
    KEY.parse().unwrap()
}

fn build(fill: &str) -> Measurements {
    Measurements {
        pcrs: [fill.repeat(48), "b1".repeat(48), "c2".repeat(48)],
    }
}

fn decrypt(principal: &str, pcrs: Option<&Measurements>) -> RequestContext {
    let mut keys = BTreeMap::new();
    if let Some(m) = pcrs {
        for (i, value) in m.pcrs.iter().enumerate() {
            keys.insert(format!("kms:RecipientAttestation:PCR{i}"), value.clone());
        }
        keys.insert(
            "kms:RecipientAttestation:ImageSha384".into(),
            m.pcrs[0].clone(),
        );
    }
    RequestContext {
        principal_arn: principal.to_string(),
        action: "kms:Decrypt".into(),
        resource: KEY.into(),
        keys,
    }
}

/// The rendered `variant` admits the role with each of `admitted`, denies it with each
/// of `denied`, and denies it without an attestation by the explicit Deny.
fn assert_admits(variant: Variant, admitted: &[Measurements], denied: &[Measurements]) {
    let text = render(variant.template(), &key(), ROLE, admitted).unwrap();
    let policy = Policy::parse(&text).unwrap();
    for build in admitted {
        assert_eq!(
            policy.evaluate(&decrypt(ROLE, Some(build))).effect,
            Effect::Allow,
            "{build:?}"
        );
    }
    for build in denied {
        assert_eq!(
            policy.evaluate(&decrypt(ROLE, Some(build))).effect,
            Effect::Deny,
            "{build:?}"
        );
    }
    let without = policy.evaluate(&decrypt(ROLE, None));
    assert_eq!(without.effect, Effect::Deny);
    assert!(
        without.reason.contains("DenyDecryptWithoutAttestation"),
        "{}",
        without.reason
    );
}

#[test]
fn rollout_policy_admits_old_and_new_builds_only() {
    let (old, new, other) = (build("a0"), build("a1"), build("ee"));
    assert_admits(Variant::Pcrs, &[old.clone(), new.clone()], &[other]);

    // After the rollout only the new build remains.
    assert_admits(Variant::Pcrs, &[new], &[old]);
}

#[test]
fn the_account_administers_but_cannot_decrypt() {
    let text = render(TEMPLATE, &key(), ROLE, &[build("a0")]).unwrap();
    let policy = Policy::parse(&text).unwrap();
    let root = "arn:aws:iam::111122223333:root";
    // Not even with an attestation of the right build.
    assert_eq!(
        policy.evaluate(&decrypt(root, Some(&build("a0")))).effect,
        Effect::Deny
    );
    let mut admin = decrypt(root, None);
    admin.action = "kms:ScheduleKeyDeletion".into();
    assert_eq!(policy.evaluate(&admin).effect, Effect::Allow);
    // Another role gets nothing.
    let stranger = "arn:aws:iam::111122223333:role/other";
    assert_eq!(
        policy
            .evaluate(&decrypt(stranger, Some(&build("a0"))))
            .effect,
        Effect::Deny
    );
}

#[test]
fn a_rollout_never_admits_a_mix_of_two_builds_measurements() {
    let old = build("a0");
    let mut new = build("a1");
    new.pcrs[1] = "b2".repeat(48);
    let mixed = Measurements {
        pcrs: [
            old.pcrs[0].clone(),
            new.pcrs[1].clone(),
            old.pcrs[2].clone(),
        ],
    };
    assert_admits(Variant::Pcrs, &[old, new], &[mixed]);
}

#[test]
fn image_sha384_variant_admits_the_image_and_nothing_without_attestation() {
    let (image, other) = (build("a0"), build("ee"));
    let text = render(
        Variant::ImageSha384.template(),
        &key(),
        ROLE,
        std::slice::from_ref(&image),
    )
    .unwrap();
    assert!(text.contains("kms:RecipientAttestation:ImageSha384"));
    assert!(!text.contains("RecipientAttestation:PCR1"));
    assert_admits(Variant::ImageSha384, &[image], &[other]);
}

#[test]
fn instance_role_policy_names_one_key_and_requires_an_attestation() {
    let arn = KEY;
    let text = render_iam(&key()).unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Resource"], arn);
        let actions = statement["Action"].to_string();
        if actions.contains("kms:Decrypt") {
            assert_eq!(
                statement["Condition"]["Null"]["kms:RecipientAttestation:PCR0"],
                "false"
            );
        }
    }
}

#[test]
fn the_policy_admits_the_measured_build_to_its_own_key_only() {
    let text = render(TEMPLATE, &key(), ROLE, &[build("a0")]).unwrap();
    let policy = Policy::parse(&text).unwrap();
    let mut other_key = decrypt(ROLE, Some(&build("a0")));
    other_key.resource = "arn:aws:kms:eu-west-1:111122223333:key/other".into();
    assert_eq!(policy.evaluate(&other_key).effect, Effect::Deny);
    assert_eq!(
        policy.evaluate(&decrypt(ROLE, Some(&build("a0")))).effect,
        Effect::Allow
    );
}
