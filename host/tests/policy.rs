//! The shipped key-policy template, rendered by the renderer operators use, evaluated by
//! the mock KMS's policy engine: it admits exactly the measured builds, and nothing
//! without an attestation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use host::policy::{Measurements, TEMPLATE, render};
use mock_kms::policy::{Effect, Policy, RequestContext};

const ROLE: &str = "arn:aws:iam::111122223333:role/signer-host";

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
        keys,
    }
}

#[test]
fn rollout_policy_admits_old_and_new_builds_only() {
    let (old, new, other) = (build("a0"), build("a1"), build("ee"));
    let text = render(TEMPLATE, "111122223333", ROLE, &[old.clone(), new.clone()]).unwrap();
    let policy = Policy::parse(&text).unwrap();
    assert_eq!(
        policy.evaluate(&decrypt(ROLE, Some(&old))).effect,
        Effect::Allow
    );
    assert_eq!(
        policy.evaluate(&decrypt(ROLE, Some(&new))).effect,
        Effect::Allow
    );
    assert_eq!(
        policy.evaluate(&decrypt(ROLE, Some(&other))).effect,
        Effect::Deny
    );
    let without = policy.evaluate(&decrypt(ROLE, None));
    assert_eq!(without.effect, Effect::Deny);
    assert!(
        without.reason.contains("DenyDecryptWithoutAttestation"),
        "{}",
        without.reason
    );

    // After the rollout only the new build remains.
    let text = render(TEMPLATE, "111122223333", ROLE, std::slice::from_ref(&new)).unwrap();
    let policy = Policy::parse(&text).unwrap();
    assert_eq!(
        policy.evaluate(&decrypt(ROLE, Some(&old))).effect,
        Effect::Deny
    );
    assert_eq!(
        policy.evaluate(&decrypt(ROLE, Some(&new))).effect,
        Effect::Allow
    );
}

#[test]
fn the_account_administers_but_cannot_decrypt() {
    let text = render(TEMPLATE, "111122223333", ROLE, &[build("a0")]).unwrap();
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
