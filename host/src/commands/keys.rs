//! `signer-host keys …`: stored keys, through a running host's API.

use std::path::Path;

use hyper::Method;

use super::call;

#[derive(Debug, clap::Subcommand)]
/// What to do with stored keys.
pub enum KeysCommand {
    /// List stored keys (no key material: public keys, roles, formats, states).
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
}

/// Runs one keys subcommand against the host at `socket`.
pub async fn run(socket: &Path, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List { role } => {
            let path = match role {
                Some(role) => format!("/v1/keys?role={role}"),
                None => "/v1/keys".to_string(),
            };
            call(socket, Method::GET, &path, None).await
        }
        KeysCommand::Verify { public_key } => {
            let body = serde_json::json!({ "public_key": public_key });
            call(socket, Method::POST, "/v1/keys/verify", Some(body)).await
        }
        KeysCommand::Generate { role, count } => {
            let body = serde_json::json!({ "role": role, "count": count });
            call(socket, Method::POST, "/v1/keys/generate", Some(body)).await
        }
    }
}
