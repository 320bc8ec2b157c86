//! The enclave's settings, all in one place. In a production image they come from the
//! image's environment (`SIGNER_*`, set at build time by `enclave.Dockerfile`), so they
//! are part of what PCR0 measures: a compromised host cannot change what the enclave
//! agrees to sign. Flags exist for local mode and tests.

use clap::Parser;
use common::stellar::signing_policy::SigningPolicySettings;
use common::wire::transport::Endpoint;

/// `--version` names the build flavour, so tooling can tell a mock build apart.
#[cfg(feature = "mock")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (mock build: development only)");
#[cfg(not(feature = "mock"))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (production build)");

/// Everything `signer-enclave` is configured with.
#[derive(Debug, Parser)]
#[command(
    name = "signer-enclave",
    version = VERSION,
    about = "Stellar signer: the enclave side"
)]
pub struct Settings {
    /// Where to listen for the host: vsock://CID:PORT (CID 4294967295 = any), or, in
    /// mock builds only, a Unix socket as unix:PATH.
    #[arg(
        long,
        env = "SIGNER_ENCLAVE_LISTEN",
        default_value = "vsock://4294967295:5000"
    )]
    pub listen: Endpoint,

    /// The Stellar network this enclave signs for, e.g. "Public Global Stellar Network ;
    /// September 2015". Part of the measured image: requests for any other network are
    /// refused.
    #[arg(long, env = "SIGNER_NETWORK_PASSPHRASE")]
    pub network_passphrase: Option<String>,

    /// The KMS key, by full key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID). Every KMS
    /// call names it, and the enclave uses a plaintext only when KMS's answer names it.
    #[arg(long, env = "SIGNER_KMS_KEY_ARN")]
    pub kms_key_arn: Option<String>,

    /// During a rotation of the KMS key only: the previous key, by full ARN, in the same
    /// region. Keys still under it keep signing, and `RewrapKey` moves each to
    /// --kms-key-arn (where every new seal goes). The build after the move drops it.
    #[arg(long, env = "SIGNER_PREVIOUS_KMS_KEY_ARN")]
    pub previous_kms_key_arn: Option<String>,

    /// AWS region of the KMS key (default: the key ARN's region; must equal it).
    #[arg(long, env = "SIGNER_KMS_REGION")]
    pub kms_region: Option<String>,

    /// KMS endpoint (default https://kms.REGION.amazonaws.com).
    #[arg(long, env = "SIGNER_KMS_ENDPOINT")]
    pub kms_endpoint: Option<String>,

    /// The host's KMS relay: vsock://3:8000 (the parent instance is CID 3), or a Unix
    /// socket as unix:PATH in mock builds.
    #[arg(long, env = "SIGNER_KMS_RELAY", default_value = "vsock://3:8000")]
    pub kms_relay: Endpoint,

    /// The distribution account (G...). Every other key is a channel account, bound by
    /// the channel rules of the signing policy.
    #[arg(long, env = "SIGNER_DISTRIBUTION_ACCOUNT")]
    pub distribution_account: Option<String>,

    /// The signing policy's settings (defined once, shared with the host's pre-check).
    #[command(flatten)]
    pub signing_policy: SigningPolicySettings,

    /// Opt-in key cache: keep a decrypted seed this many seconds (0 = off, the default:
    /// one KMS call per signature). Trades a bounded exposure window for throughput. A key
    /// used in the last eighth of this is decrypted again in the background, so its next
    /// entry is ready when this one expires.
    #[arg(long, env = "SIGNER_KEY_CACHE_TTL_SECS", default_value_t = 0)]
    pub key_cache_ttl_secs: u64,

    /// With the key cache on: signatures one decryption may serve. From 4 up, at half of
    /// them (or in the last eighth of the ttl) the key is decrypted again in the
    /// background, so its next entry is ready.
    #[arg(long, env = "SIGNER_KEY_CACHE_MAX_USES", default_value_t = 100)]
    pub key_cache_max_uses: u32,

    /// Rotate the KMS recipient key and attestation document this often.
    #[arg(long, env = "SIGNER_ATTESTATION_ROTATION_SECS", default_value_t = 120)]
    pub attestation_rotation_secs: u64,

    /// Mock builds only: trust this CA (PEM) for the KMS endpoint instead of the web roots.
    #[cfg(feature = "mock")]
    #[arg(long)]
    pub kms_ca_pem: Option<std::path::PathBuf>,

    /// Mock builds only: directory of the mock NSM's CA (created if missing).
    #[cfg(feature = "mock")]
    #[arg(long)]
    pub mock_nsm_ca_dir: Option<std::path::PathBuf>,

    /// Mock builds only: PCR values of the mock NSM, as INDEX=HEX[,INDEX=HEX...].
    #[cfg(feature = "mock")]
    #[arg(long, default_value = "")]
    pub mock_pcrs: String,

    /// Log format: text or json.
    #[arg(long, env = "SIGNER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Print every setting this enclave would run with (value, and whether it came from
    /// a flag, the image's environment or the default), then exit.
    #[arg(long)]
    pub print_config: bool,
}

/// One setting as given: its flag, its values and where they came from.
struct SettingValue {
    long: String,
    values: Vec<String>,
    source: String,
}

/// Every setting of `signer-enclave` (not the `--print-config`, `--help` and
/// `--version` switches), in the order `--help` lists them.
fn setting_values<I, T>(args: I) -> Result<Vec<SettingValue>, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::CommandFactory;
    use clap::parser::ValueSource;
    let command = Settings::command();
    let matches = command.clone().try_get_matches_from(args)?;
    let mut settings = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(id, "print_config" | "help" | "version") {
            continue;
        }
        let values = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_string(),
            Some(ValueSource::EnvVariable) => {
                arg.get_env().map_or("environment".to_string(), |env| {
                    format!("environment {}", env.to_string_lossy())
                })
            }
            Some(ValueSource::DefaultValue) => "default".to_string(),
            _ => "unset".to_string(),
        };
        settings.push(SettingValue {
            long: long.to_string(),
            values,
            source,
        });
    }
    Ok(settings)
}

/// Every setting as `--flag = value  (source)` lines, then the settings digest. The
/// enclave holds no secret setting, so nothing is redacted.
pub fn describe_settings<I, T>(args: I) -> Result<String, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let settings = setting_values(args)?;
    let digest = digest_of(&settings);
    let mut lines: Vec<String> = settings
        .into_iter()
        .map(|s| {
            let shown = if s.values.is_empty() {
                "-".to_string()
            } else {
                s.values.join(",")
            };
            format!("--{} = {shown}  ({})\n", s.long, s.source)
        })
        .collect();
    lines.push(format!(
        "settings digest (the user_data of attestation documents for callers): {}\n",
        common::hex(&digest)
    ));
    Ok(lines.concat())
}

/// SHA-256 of the settings' values, one `--flag=value` line each (values joined with
/// commas, unset ones empty), in the order `--help` lists them; where a value came from
/// (flag, environment, default) does not change it. Attestation documents made for
/// callers carry it as `user_data`, so a caller that knows the settings it expects can
/// check them, next to the PCRs that measure the image holding them.
pub fn settings_digest<I, T>(args: I) -> Result<[u8; 32], clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Ok(digest_of(&setting_values(args)?))
}

fn digest_of(settings: &[SettingValue]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for setting in settings {
        digest.update(format!("--{}={}\n", setting.long, setting.values.join(",")));
    }
    digest.finalize().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn print_config_shows_each_setting_with_its_source() {
        let shown = super::describe_settings([
            "signer-enclave",
            "--network-passphrase",
            "Test SDF Network ; September 2015",
            "--policy-max-fee",
            "500",
            "--print-config",
        ])
        .unwrap();
        assert!(
            shown.contains("--network-passphrase = Test SDF Network ; September 2015  (flag)"),
            "{shown}"
        );
        assert!(shown.contains("--policy-max-fee = 500  (flag)"), "{shown}");
        assert!(
            shown.contains("--listen = vsock://4294967295:5000  (default)"),
            "{shown}"
        );
        assert!(shown.contains("--kms-key-arn = -  (unset)"), "{shown}");
        assert!(!shown.contains("--print-config"), "{shown}");
        assert!(shown.contains("settings digest"), "{shown}");
    }

    #[test]
    fn the_settings_digest_follows_the_values_not_where_they_came_from() {
        let base = ["signer-enclave", "--policy-max-fee", "500"];
        let digest = super::settings_digest(base).unwrap();
        assert_eq!(
            digest,
            super::settings_digest(["signer-enclave", "--policy-max-fee=500"]).unwrap()
        );
        assert_ne!(
            digest,
            super::settings_digest(["signer-enclave", "--policy-max-fee", "501"]).unwrap()
        );
        assert_ne!(digest, super::settings_digest(["signer-enclave"]).unwrap());
    }
}
