//! Renders the KMS key-policy template in `kms-policy/` from enclave measurements, as
//! `nitro-cli build-enclave` / `describe-eif` print them. Several builds may be admitted
//! at once (a rollout: old and new PCRs both allowed, then the old removed).

use common::kms_key::KmsKeyArn;
use serde_json::Value;

/// The shipped template; the local stack and the tests render this very file.
pub const TEMPLATE: &str = include_str!("../../kms-policy/key-policy.json.tmpl");
/// The variant that admits builds by `kms:RecipientAttestation:ImageSha384`.
pub const TEMPLATE_IMAGE_SHA384: &str =
    include_str!("../../kms-policy/key-policy-image-sha384.json.tmpl");
/// The instance role's IAM policy (placeholder `${KMS_KEY_ARN}`).
pub const IAM_TEMPLATE: &str = include_str!("../../kms-policy/instance-role-policy.json.tmpl");

/// The instance role's IAM policy for one KMS key.
pub fn render_iam(key_arn: &KmsKeyArn) -> Result<String, RenderError> {
    let policy: Value =
        serde_json::from_str(&IAM_TEMPLATE.replace("${KMS_KEY_ARN}", key_arn.as_str()))
            .map_err(|e| RenderError::BadTemplate(e.to_string()))?;
    serde_json::to_string_pretty(&policy).map_err(|e| RenderError::BadTemplate(e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("measurements are not JSON: {0}")]
    NotJson(String),
    #[error(
        "no \"Measurements\" object (expected the output of nitro-cli build-enclave or describe-eif)"
    )]
    NoMeasurements,
    #[error("{pcr} is missing")]
    MissingPcr { pcr: &'static str },
    #[error("{pcr} must be 96 hexadecimal characters (SHA-384), got {actual:?}")]
    BadPcr { pcr: &'static str, actual: String },
    #[error(
        "PCR0 is all zeros: that is a debug-mode enclave, which proves nothing; never admit it"
    )]
    DebugMeasurements,
    #[error("{0}")]
    BadArgument(String),
    #[error("the rendered policy is not valid JSON: {0}")]
    BadTemplate(String),
}

/// PCR0..PCR2 of one enclave image, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurements {
    pub pcrs: [String; 3],
}

const PCR_NAMES: [&str; 3] = ["PCR0", "PCR1", "PCR2"];

pub fn parse_measurements(json: &str) -> Result<Measurements, RenderError> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| RenderError::NotJson(e.to_string()))?;
    let measurements = value
        .get("Measurements")
        .and_then(Value::as_object)
        .ok_or(RenderError::NoMeasurements)?;
    let mut pcrs: [String; 3] = Default::default();
    for (slot, pcr) in pcrs.iter_mut().zip(PCR_NAMES) {
        let text = measurements
            .get(pcr)
            .and_then(Value::as_str)
            .ok_or(RenderError::MissingPcr { pcr })?;
        if text.len() != 96 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RenderError::BadPcr {
                pcr,
                actual: text.to_string(),
            });
        }
        *slot = text.to_ascii_lowercase();
    }
    if pcrs[0].bytes().all(|b| b == b'0') {
        return Err(RenderError::DebugMeasurements);
    }
    Ok(Measurements { pcrs })
}

/// Which attestation condition keys admit a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// `kms:RecipientAttestation:PCR0/1/2` (the default).
    Pcrs,
    /// `kms:RecipientAttestation:ImageSha384` (equal to PCR0: the whole image).
    ImageSha384,
}

impl Variant {
    pub fn template(self) -> &'static str {
        match self {
            Variant::Pcrs => TEMPLATE,
            Variant::ImageSha384 => TEMPLATE_IMAGE_SHA384,
        }
    }
}

/// Fills `template` for the key `key_arn` (its account administers it; the enclave's
/// statement names the key itself, so the policy cannot admit a build to another key),
/// the host's instance `role_arn`, and every build in `builds` (one normally; two
/// during a rollout). Each statement that names a
/// measurement placeholder is repeated once per build, so a rollout admits exactly the
/// old and the new image, never a mix of one's PCR0 with the other's PCR1.
pub fn render(
    template: &str,
    key_arn: &KmsKeyArn,
    role_arn: &str,
    builds: &[Measurements],
) -> Result<String, RenderError> {
    if !role_arn.starts_with("arn:aws") || !role_arn.contains(":role/") {
        return Err(RenderError::BadArgument(format!(
            "{role_arn:?} is not an IAM role ARN"
        )));
    }
    if builds.is_empty() {
        return Err(RenderError::BadArgument(
            "name at least one build's measurements".into(),
        ));
    }
    let mut unique: Vec<&Measurements> = Vec::new();
    for build in builds {
        if !unique.contains(&build) {
            unique.push(build);
        }
    }
    let mut policy: Value = serde_json::from_str(
        &template
            .replace("${ACCOUNT_ID}", key_arn.account())
            .replace("${KMS_KEY_ARN}", key_arn.as_str())
            .replace("${HOST_ROLE_ARN}", role_arn),
    )
    .map_err(|e| RenderError::BadTemplate(format!("the template is not JSON: {e}")))?;
    let statements = policy
        .get_mut("Statement")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| RenderError::BadTemplate("no Statement array".into()))?;
    let mut rendered = Vec::new();
    for statement in statements.drain(..) {
        let text = statement.to_string();
        if !MEASUREMENT_PLACEHOLDERS.iter().any(|p| text.contains(p)) {
            rendered.push(statement);
            continue;
        }
        for (index, build) in unique.iter().enumerate() {
            let mut filled = text
                .replace("${PCR0}", &build.pcrs[0])
                .replace("${PCR1}", &build.pcrs[1])
                .replace("${PCR2}", &build.pcrs[2])
                .replace("${IMAGE_SHA384}", &build.pcrs[0]);
            if unique.len() > 1 {
                // Sids must stay unique; the PCR0 prefix tells the builds apart.
                filled = filled.replacen(
                    "\"Sid\":\"",
                    &format!("\"Sid\":\"Build{}{}", index + 1, &build.pcrs[0][..8]),
                    1,
                );
            }
            rendered.push(
                serde_json::from_str(&filled)
                    .map_err(|e| RenderError::BadTemplate(e.to_string()))?,
            );
        }
    }
    *statements = rendered;
    let text = serde_json::to_string_pretty(&policy)
        .map_err(|e| RenderError::BadTemplate(e.to_string()))?;
    if text.contains("${") {
        return Err(RenderError::BadTemplate(
            "a placeholder was left unfilled".into(),
        ));
    }
    Ok(text)
}

const MEASUREMENT_PLACEHOLDERS: [&str; 4] = ["${PCR0}", "${PCR1}", "${PCR2}", "${IMAGE_SHA384}"];

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/../kms-policy/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn captured_outputs_parse() {
        let built = parse_measurements(&sample("build-enclave-output.json")).unwrap();
        assert!(built.pcrs[0].starts_with("287b2493"));
        let described = parse_measurements(&sample("describe-eif-output.json")).unwrap();
        // Upper-case hex is normalised.
        assert!(described.pcrs[0].starts_with("7fb5c55b"));
    }

    #[test]
    fn malformed_outputs_are_refused_with_the_reason() {
        assert!(matches!(
            parse_measurements(&sample("malformed-short-pcr.json")),
            Err(RenderError::BadPcr { pcr: "PCR0", .. })
        ));
        assert_eq!(
            parse_measurements(&sample("malformed-missing-pcr2.json")),
            Err(RenderError::MissingPcr { pcr: "PCR2" })
        );
        assert!(matches!(
            parse_measurements(&sample("malformed-not-hex.json")),
            Err(RenderError::BadPcr { pcr: "PCR0", .. })
        ));
        assert_eq!(
            parse_measurements(&sample("malformed-debug-zero-pcr0.json")),
            Err(RenderError::DebugMeasurements)
        );
        assert!(matches!(
            parse_measurements(&sample("malformed-not-json.json")),
            Err(RenderError::NotJson(_))
        ));
        assert_eq!(parse_measurements("{}"), Err(RenderError::NoMeasurements));
    }

    #[test]
    fn arguments_are_checked() {
        let m = parse_measurements(&sample("build-enclave-output.json")).unwrap();
        let role = "arn:aws:iam::111122223333:role/signer-host";
        let key: KmsKeyArn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd"
            .parse()
            .unwrap();
        assert!(render(TEMPLATE, &key, "signer-host", std::slice::from_ref(&m)).is_err());
        assert!(render(TEMPLATE, &key, role, &[]).is_err());
        for template in [TEMPLATE, TEMPLATE_IMAGE_SHA384] {
            let text = render(template, &key, role, std::slice::from_ref(&m)).unwrap();
            assert!(!text.contains("${"));
            // The account of the key administers it; the enclave's statement names the key.
            assert!(text.contains("arn:aws:iam::111122223333:root"));
            let policy: Value = serde_json::from_str(&text).unwrap();
            let enclave = policy["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["Sid"] == "OnlyTheMeasuredEnclaveDecrypts")
                .unwrap();
            assert_eq!(enclave["Resource"], key.as_str());
        }
    }
}
