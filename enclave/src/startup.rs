//! Turns the settings into the running parts: the NSM (real or, in mock builds, the
//! mock), the attested recipient identity and its rotation, the KMS client and the
//! optional key cache.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "mock")]
use anyhow::Context;
use anyhow::bail;
use tokio_util::sync::CancellationToken;
use tracing::info;

use common::kms_key::KmsKeyArn;

use crate::attestor::Attestor;
use crate::budget::SpendingLimits;
use crate::config::Settings;
use crate::context::SigningContext;
use crate::kms::client::{KmsClient, KmsSettings, PushedCredentials};
use crate::nsm::Nsm;

// KMS calls are bounded so that an answer, or `kms_throttled` / `kms_unavailable`,
// reaches the host well within its request timeout (30 s by default). A KMS Decrypt
// takes tens of milliseconds; an attempt that takes 2 s is stuck, not slow.
const KMS_MAX_ATTEMPTS: u32 = 4;
const KMS_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const KMS_MAX_BACKOFF: Duration = Duration::from_secs(1);
const KMS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const KMS_OPERATION_TIMEOUT: Duration = Duration::from_secs(8);

#[cfg(feature = "mock")]
fn parse_mock_pcrs(text: &str) -> anyhow::Result<std::collections::BTreeMap<u8, [u8; 48]>> {
    let mut pcrs = std::collections::BTreeMap::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (index, value) = item
            .split_once('=')
            .with_context(|| format!("--mock-pcrs item {item:?}: expected INDEX=HEX"))?;
        let bytes =
            common::unhex(value).with_context(|| format!("--mock-pcrs {index}: not hex"))?;
        let pcr: [u8; 48] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("--mock-pcrs {index}: expected 96 hex characters"))?;
        pcrs.insert(index.parse::<u8>().context("--mock-pcrs index")?, pcr);
    }
    Ok(pcrs)
}

#[cfg(feature = "mock")]
fn open_nsm(settings: &Settings) -> anyhow::Result<Arc<dyn Nsm>> {
    let pcrs = parse_mock_pcrs(&settings.mock_pcrs)?;
    let dir = settings
        .mock_nsm_ca_dir
        .clone()
        .context("a mock enclave needs --mock-nsm-ca-dir to sign")?;
    tracing::warn!(
        marker = common::mock_nsm::MOCK_NSM_MARKER,
        ca = %dir.display(),
        "attestation documents come from a MOCK NSM: development only"
    );
    Ok(Arc::new(crate::nsm::mock::MockNsmDevice::new(&dir, &pcrs)?))
}

#[cfg(not(feature = "mock"))]
fn open_nsm(_: &Settings) -> anyhow::Result<Arc<dyn Nsm>> {
    Ok(Arc::new(crate::nsm::nitro::NitroNsm::open()?))
}

fn kms_roots(settings: &Settings) -> anyhow::Result<rustls::RootCertStore> {
    #[cfg(feature = "mock")]
    if let Some(path) = &settings.kms_ca_pem {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let der = common::attestation::document::certificate_der_from_pem(&pem)?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .context("the mock KMS CA")?;
        return Ok(roots);
    }
    let _ = settings;
    Ok(rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
}

/// The signing context. Signing needs a network, the KMS key ARN and the distribution
/// account: production builds refuse to start without them; mock builds may run as a
/// bare transport endpoint (protocol tests) and answer only pings.
pub fn signing_context(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<SigningContext>> {
    let (Some(network), Some(key_arn), Some(distribution)) = (
        &settings.network_passphrase,
        &settings.kms_key_arn,
        &settings.distribution_account,
    ) else {
        if cfg!(feature = "mock") {
            info!("no --network-passphrase/--kms-key-arn/--distribution-account: signing disabled");
            return Ok(None);
        }
        bail!("--network-passphrase, --kms-key-arn and --distribution-account are required");
    };
    let key_arn: KmsKeyArn = key_arn.parse()?;
    let region = kms_region(settings.kms_region.as_deref(), &key_arn)?;
    let distribution =
        stellar_strkey::ed25519::PublicKey::from_string(distribution).map_err(|_| {
            anyhow::anyhow!("--distribution-account {distribution:?} is not a G... key")
        })?;
    let policy = settings
        .signing_policy
        .signing_policy(distribution.0)
        .map_err(|e| anyhow::anyhow!("--policy-soroban-contract: {e}"))?;
    info!(
        distribution = %stellar_strkey::ed25519::PublicKey(policy.distribution),
        max_time_window_secs = policy.max_time_window_secs,
        max_fee = policy.max_fee,
        max_fee_bump_fee = policy.max_fee_bump_fee,
        distribution_unrestricted = policy.distribution_unrestricted,
        soroban_calls = ?policy
            .soroban_calls
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        "signing policy"
    );
    let endpoint_url = settings
        .kms_endpoint
        .clone()
        // Empty means unset: the image build passes every setting, set or not.
        .filter(|endpoint| !endpoint.trim().is_empty())
        .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
    let kms_settings = KmsSettings {
        region,
        endpoint_url,
        relay: settings.kms_relay.clone(),
        roots: kms_roots(settings)?,
        max_attempts: KMS_MAX_ATTEMPTS,
        initial_backoff: KMS_INITIAL_BACKOFF,
        max_backoff: KMS_MAX_BACKOFF,
        attempt_timeout: KMS_ATTEMPT_TIMEOUT,
        operation_timeout: KMS_OPERATION_TIMEOUT,
    };
    let kms = KmsClient::new(kms_settings, PushedCredentials::default())?;
    let attestor = Attestor::new(open_nsm(settings)?)?;
    attestor.spawn_rotation(
        Duration::from_secs(settings.attestation_rotation_secs),
        shutdown.clone(),
    );
    let budget = &settings.signing_policy;
    info!(
        fee_budget_stroops = budget.fee_budget_stroops,
        max_sponsored_accounts = budget.max_sponsored_accounts,
        window_secs = budget.budget_window_secs,
        "distribution spending limits (reset by a restart of the enclave)"
    );
    let limits = SpendingLimits::new(
        budget.fee_budget_stroops,
        budget.max_sponsored_accounts,
        Duration::from_secs(budget.budget_window_secs.max(1)),
    );
    let previous = previous_kms_key(settings, &key_arn)?;
    info!(kms_key_arn = %key_arn, previous_kms_key_arn = ?previous.as_ref().map(ToString::to_string), "the KMS key this enclave uses (and, rotating, the previous one it still reads)");
    let mut context = SigningContext::new(
        network.clone(),
        Arc::new(kms),
        key_arn,
        attestor,
        policy,
        limits,
    );
    context.previous_kms_key_arn = previous;
    context.cache = key_cache(settings, shutdown);
    Ok(Some(context))
}

/// The previous KMS key of a rotation build: another key, in the same region (one KMS
/// client serves both).
fn previous_kms_key(settings: &Settings, key_arn: &KmsKeyArn) -> anyhow::Result<Option<KmsKeyArn>> {
    let Some(previous) = settings
        .previous_kms_key_arn
        .as_deref()
        .map(str::trim)
        // Empty means unset: the image build passes every setting, set or not.
        .filter(|arn| !arn.is_empty())
    else {
        return Ok(None);
    };
    let previous: KmsKeyArn = previous.parse()?;
    if previous == *key_arn {
        bail!("--previous-kms-key-arn is --kms-key-arn itself; drop it once the rotation is done");
    }
    if previous.region() != key_arn.region() {
        bail!(
            "--previous-kms-key-arn {previous} is in another region than --kms-key-arn {key_arn}"
        );
    }
    Ok(Some(previous))
}

/// The KMS region: the key ARN's, which `--kms-region` may repeat but not contradict
/// (calls to another region's endpoint could never use the measured key).
fn kms_region(configured: Option<&str>, key_arn: &KmsKeyArn) -> anyhow::Result<String> {
    match configured
        .map(str::trim)
        .filter(|region| !region.is_empty())
    {
        None => Ok(key_arn.region().to_string()),
        Some(region) if region == key_arn.region() => Ok(region.to_string()),
        Some(region) => {
            bail!("--kms-region {region} differs from the region of --kms-key-arn {key_arn}")
        }
    }
}

/// The opt-in key cache and its sweeper, when a TTL is set.
fn key_cache(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Option<Arc<crate::cache::KeyCache>> {
    if settings.key_cache_ttl_secs == 0 {
        return None;
    }
    let cache = Arc::new(crate::cache::KeyCache::new(
        Duration::from_secs(settings.key_cache_ttl_secs),
        settings.key_cache_max_uses,
    ));
    let sweeper = cache.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => { sweeper.sweep(); }
            }
        }
    });
    info!(
        ttl_secs = settings.key_cache_ttl_secs,
        max_uses = settings.key_cache_max_uses,
        "key cache ON: decrypted seeds stay in enclave memory within these bounds"
    );
    Some(cache)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_region_comes_from_the_key_arn_and_may_not_contradict_it() {
        let arn: KmsKeyArn = "arn:aws:kms:eu-west-1:111122223333:key/abc"
            .parse()
            .unwrap();
        assert_eq!(kms_region(None, &arn).unwrap(), "eu-west-1");
        assert_eq!(kms_region(Some(""), &arn).unwrap(), "eu-west-1");
        assert_eq!(kms_region(Some("eu-west-1"), &arn).unwrap(), "eu-west-1");
        let error = kms_region(Some("us-east-1"), &arn).unwrap_err().to_string();
        assert!(error.contains("differs"), "{error}");
    }
}
