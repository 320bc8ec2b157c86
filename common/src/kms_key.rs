//! The one KMS key a deployment uses, named by its full key ARN. The enclave's
//! measured settings carry it: every KMS call names it as `KeyId`, and a plaintext is
//! used only when KMS's TLS-authenticated answer names it too. Without that, a host
//! that pushed credentials of its own AWS account could have seeds sealed under, or
//! decrypted from, a key it controls. An ARN, not an alias or a bare key id: an alias
//! can be repointed, and a bare id is resolved in whichever account the credentials
//! belong to.

use std::fmt;
use std::str::FromStr;

/// `arn:<partition>:kms:<region>:<account>:key/<key-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KmsKeyArn {
    text: String,
    region_start: usize,
    region_end: usize,
    account_end: usize,
}

/// Why a text is not a KMS key ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a KMS key ARN (expected arn:<partition>:kms:<region>:<12-digit account>:key/<key id>): {reason}"
)]
pub struct KmsKeyArnError {
    /// What was given.
    pub text: String,
    /// Which part is wrong.
    pub reason: &'static str,
}

impl KmsKeyArn {
    /// The region the key lives in.
    pub fn region(&self) -> &str {
        &self.text[self.region_start..self.region_end]
    }

    /// The 12-digit AWS account that owns the key.
    pub fn account(&self) -> &str {
        &self.text[self.region_end + 1..self.account_end]
    }

    /// The ARN as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for KmsKeyArn {
    type Err = KmsKeyArnError;

    fn from_str(text: &str) -> Result<KmsKeyArn, KmsKeyArnError> {
        let error = |reason| KmsKeyArnError {
            text: text.to_string(),
            reason,
        };
        let parts: Vec<&str> = text.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = parts[..] else {
            return Err(error("it needs six ':'-separated parts"));
        };
        let label = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        // China and GovCloud have other endpoints and IAM ARNs than the ones this
        // build derives and renders; refuse them rather than half-support them.
        if arn != "arn" || partition != "aws" {
            return Err(error("it must start with arn:aws: (the aws partition)"));
        }
        if service != "kms" {
            return Err(error("the service must be kms"));
        }
        if !label(region) {
            return Err(error("the region is missing or malformed"));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error("the account must be 12 digits"));
        }
        let Some(key_id) = resource.strip_prefix("key/") else {
            return Err(error(
                "the resource must be key/<key id> (an alias is not accepted)",
            ));
        };
        // KMS names keys in lower case, and its answers are compared byte for byte.
        let key_id_ok = (1..=64).contains(&key_id.len())
            && key_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !key_id_ok {
            return Err(error(
                "the key id is missing or malformed (lower-case letters, digits, '-')",
            ));
        }
        let region_start = arn.len() + partition.len() + service.len() + 3;
        let region_end = region_start + region.len();
        Ok(KmsKeyArn {
            text: text.to_string(),
            region_start,
            region_end,
            account_end: region_end + 1 + account.len(),
        })
    }
}

impl fmt::Display for KmsKeyArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_arn_parses_into_its_parts() {
        let arn: KmsKeyArn =
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                .parse()
                .unwrap();
        assert_eq!(arn.region(), "us-east-1");
        assert_eq!(arn.account(), "111122223333");
        let multi_region: KmsKeyArn = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd"
            .parse()
            .unwrap();
        assert_eq!(multi_region.region(), "eu-west-1");
    }

    #[test]
    fn aliases_bare_ids_and_other_services_are_refused() {
        for (text, reason) in [
            ("alias/signer", "six"),
            ("1234abcd-12ab-34cd-56ef-1234567890ab", "six"),
            (
                "arn:aws:kms:us-east-1:111122223333:alias/signer",
                "alias is not accepted",
            ),
            ("arn:aws:s3:us-east-1:111122223333:key/abc", "service"),
            ("arn:aws:kms:us-east-1:1111:key/abc", "12 digits"),
            ("arn:aws:kms::111122223333:key/abc", "region"),
            ("arn:aws:kms:us-east-1:111122223333:key/", "key id"),
            ("arn:aws:kms:us-east-1:111122223333:key/a:b", "key id"),
            ("urn:aws:kms:us-east-1:111122223333:key/abc", "arn:aws"),
            (
                "arn:aws-cn:kms:cn-north-1:111122223333:key/abc",
                "aws partition",
            ),
            ("arn:aws:kms:us-east-1:111122223333:key/ABC", "lower-case"),
        ] {
            let error = text.parse::<KmsKeyArn>().unwrap_err();
            assert!(error.reason.contains(reason), "{text}: {error}");
        }
    }
}
