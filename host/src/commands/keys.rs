//! `signer-host keys …`: stored keys, through a running host's API.

use std::path::Path;

use std::io::IsTerminal;

use hyper::Method;

use super::{Api, call, request};

#[derive(Debug, clap::Subcommand)]
/// What to do with stored keys.
pub enum KeysCommand {
    /// List stored keys (no key material: public keys, roles, formats, states).
    ///
    /// Example: `signer-host keys list --role channel --json`
    List {
        /// Only this role: distribution or channel.
        #[arg(long)]
        role: Option<String>,
    },
    /// Generate keys inside the enclave (`envelope` format: sealed there under a data
    /// key from KMS, never seen by the host); stored durably before the answer.
    ///
    /// Example: `signer-host keys generate --role channel --count 10`
    Generate {
        /// distribution (only while none is active; count 1) or channel.
        #[arg(long)]
        role: String,
        /// How many, 1 to 100.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Check an imported key again (it stays pending until the enclave has decrypted
    /// it, matched its public key and made a test signature), e.g. once KMS is back or
    /// the key policy is fixed.
    ///
    /// Example: `signer-host keys verify GABC...`
    Verify { public_key: String },
    /// Move every key not yet under KMS key ARN to it (a rotation), one at a time,
    /// while signing goes on: the enclave must be the rotation build, naming ARN as its
    /// KMS key and the old key as the previous one.
    ///
    /// Example: `signer-host keys rewrap --to-kms-key arn:aws:kms:eu-west-1:111122223333:key/...`
    Rewrap {
        #[arg(long)]
        to_kms_key: String,
    },
    /// Retire a key: it never signs again, and a channel leaves the pool at once. (To
    /// shrink the pool and merge the accounts, use `channels ensure` instead.)
    ///
    /// Example: `signer-host keys retire GABC...`
    Retire { public_key: String },
}

/// Runs one keys subcommand against the running host `api`.
pub async fn run(api: &Api, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List { role } => {
            let path = match role {
                Some(role) => format!("/v1/keys?role={role}"),
                None => "/v1/keys".to_string(),
            };
            call(api, Method::GET, &path, None).await
        }
        KeysCommand::Rewrap { to_kms_key } => rewrap_all(&api.socket, &to_kms_key).await,
        KeysCommand::Retire { public_key } => {
            let body = serde_json::json!({ "public_key": public_key });
            call(api, Method::POST, "/v1/keys/retire", Some(body)).await
        }
        KeysCommand::Verify { public_key } => {
            let body = serde_json::json!({ "public_key": public_key });
            call(api, Method::POST, "/v1/keys/verify", Some(body)).await
        }
        KeysCommand::Generate { role, count } => {
            let body = serde_json::json!({ "role": role, "count": count });
            call(api, Method::POST, "/v1/keys/generate", Some(body)).await
        }
    }
}

/// Rewraps every stored key (not retired) that is not yet sealed under `to_kms_key`.
async fn rewrap_all(socket: &Path, to_kms_key: &str) -> anyhow::Result<()> {
    let listing = request(socket, Method::GET, "/v1/keys", None).await?;
    let keys: Vec<String> = listing["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|k| k["state"] != "retired")
        .filter(|k| k["kms_key_id"] != to_kms_key || k["format"] != "envelope")
        .filter_map(|k| k["public_key"].as_str().map(str::to_string))
        .collect();
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(keys.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    for public_key in &keys {
        let body = serde_json::json!({ "public_key": public_key, "to_kms_key": to_kms_key });
        if let Err(e) = request(socket, Method::POST, "/v1/keys/rewrap", Some(body)).await {
            bar.abandon();
            anyhow::bail!("{public_key}: {e}; the keys before it are rewrapped, re-run to go on");
        }
        if bar.is_hidden() {
            eprintln!("rewrapped {public_key}");
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!("{} keys rewrapped under {to_kms_key}", keys.len());
    Ok(())
}
