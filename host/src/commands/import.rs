//! `signer-host import wallet-backend`: moves stellar/wallet-backend's keys in, through
//! a running host, without the host ever seeing a seed or the passphrase.
//!
//! Channel keys: rows of wallet-backend's `channel_accounts` table, exported with
//! `psql -c "\copy (SELECT public_key, encrypted_private_key FROM channel_accounts) TO
//! 'channels.csv' CSV HEADER"`. The passphrase (`CHANNEL_ACCOUNT_ENCRYPTION_PASSPHRASE`)
//! goes in only as a KMS ciphertext the operator makes under the signer's KMS key:
//! `aws kms encrypt --key-id ARN --plaintext fileb://passphrase.txt --encryption-context
//! purpose=wallet-backend-import --query CiphertextBlob --output text`. The enclave
//! decrypts it, opens each key and re-seals it; 100 keys per request.
//!
//! The distribution key: wallet-backend's `keypairs` row is a KMS ciphertext with
//! context `{"pubkey": "G..."}`, i.e. a `kms-direct` key: it is registered with
//! `POST /v1/keys` (and verified by the enclave) when `--distribution-*` are given.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::Method;
use serde_json::json;

use super::{Api, call};
use common::wire::messages::MAX_IMPORTED_KEYS;

#[derive(Debug, clap::Subcommand)]
/// What to import.
pub enum ImportCommand {
    /// stellar/wallet-backend's channel accounts (and optionally its distribution key).
    ///
    /// Example: `signer-host import wallet-backend --channels channels.csv
    /// --passphrase-ciphertext passphrase.b64`
    WalletBackend(WalletBackendArgs),
}

#[derive(Debug, clap::Args)]
pub struct WalletBackendArgs {
    /// CSV of `public_key,encrypted_private_key` rows (a header line is skipped).
    #[arg(long)]
    pub channels: PathBuf,
    /// The passphrase's KMS ciphertext: base64 (as `aws kms encrypt --output text`
    /// prints it) or raw bytes.
    #[arg(long)]
    pub passphrase_ciphertext: PathBuf,
    /// The distribution account (wallet-backend's `keypairs.public_key`).
    #[arg(long, requires_all = ["distribution_ciphertext", "kms_key_arn"])]
    pub distribution_public_key: Option<String>,
    /// Its KMS ciphertext (`keypairs.encrypted_private_key`): base64 or raw bytes.
    #[arg(long)]
    pub distribution_ciphertext: Option<PathBuf>,
    /// The KMS key the distribution ciphertext is under (the enclave's measured key).
    #[arg(long)]
    pub kms_key_arn: Option<String>,
}

/// Runs one import subcommand against the running host `api`.
pub async fn run(api: &Api, command: ImportCommand) -> anyhow::Result<()> {
    let ImportCommand::WalletBackend(args) = command;
    let passphrase = B64.encode(read_blob(&args.passphrase_ciphertext)?);
    let rows = read_channels(&args.channels)?;
    if let (Some(public_key), Some(path), Some(arn)) = (
        &args.distribution_public_key,
        &args.distribution_ciphertext,
        &args.kms_key_arn,
    ) {
        let body = json!({
            "public_key": public_key,
            "role": "distribution",
            "kms_key_id": arn,
            "ciphertext": B64.encode(read_blob(path)?),
        });
        call(api, Method::POST, "/v1/keys", Some(body)).await?;
    }
    for (index, batch) in rows.chunks(MAX_IMPORTED_KEYS).enumerate() {
        let channels: Vec<_> = batch
            .iter()
            .map(|(public_key, encrypted)| {
                json!({ "public_key": public_key, "encrypted_private_key": encrypted })
            })
            .collect();
        let body = json!({ "passphrase_ciphertext": passphrase, "channels": channels });
        call(
            api,
            Method::POST,
            "/v1/keys/import/wallet-backend",
            Some(body),
        )
        .await
        .with_context(|| format!("batch {} of the channel keys", index + 1))?;
    }
    eprintln!("imported {} channel keys from wallet-backend", rows.len());
    Ok(())
}

/// `public_key,encrypted_private_key` rows; a header line is skipped.
fn read_channels(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (number == 0 && line.starts_with("public_key")) {
            continue;
        }
        let Some((public_key, encrypted)) = line.split_once(',') else {
            bail!(
                "{}:{}: expected public_key,encrypted_private_key",
                path.display(),
                number + 1
            );
        };
        rows.push((
            public_key.trim().trim_matches('"').to_string(),
            encrypted.trim().trim_matches('"').to_string(),
        ));
    }
    if rows.is_empty() {
        bail!("{} holds no channel keys", path.display());
    }
    Ok(rows)
}

/// A file holding a KMS ciphertext, base64 or raw.
fn read_blob(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(B64.decode(text.trim()).unwrap_or(bytes))
}
