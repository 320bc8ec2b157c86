//! `signer-host`'s subcommands, one file each. `serve` runs the host; the others either
//! render deployment artifacts or call a running host over its API socket (so they
//! work with the same permissions as any host service and never touch the database
//! behind the host's back).

pub mod channels;
pub mod channels_ensure;
pub mod config;
pub mod import;
pub mod keys;
pub mod render_iam_policy;
pub mod render_key_policy;
pub mod serve;

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::api_client::request_once;
use crate::config::DEFAULT_API_SOCKET;

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the host API and relay to the enclave.
    Serve(serve::ServeArgs),
    /// The configuration: `config check` validates it and prints the effective one.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Render the KMS key policy (kms-policy/key-policy.json.tmpl) for the enclave
    /// build(s) whose measurements nitro-cli printed; prints the key policy JSON.
    RenderKeyPolicy(render_key_policy::RenderKeyPolicyArgs),
    /// Print the IAM policy for the parent instance's role (KMS calls for one key, only
    /// with an attestation).
    RenderIamPolicy(render_iam_policy::RenderIamPolicyArgs),
    /// Stored keys (calls a running host).
    Keys {
        /// The host API socket.
        #[arg(long, env = "SIGNER_HOST_SOCKET", default_value = DEFAULT_API_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Import existing keys (calls a running host).
    Import {
        /// The host API socket.
        #[arg(long, env = "SIGNER_HOST_SOCKET", default_value = DEFAULT_API_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        command: import::ImportCommand,
    },
    /// The channel-account pool (calls a running host).
    Channels {
        /// The host API socket.
        #[arg(long, env = "SIGNER_HOST_SOCKET", default_value = DEFAULT_API_SOCKET)]
        socket: PathBuf,
        #[command(subcommand)]
        command: channels::ChannelsCommand,
    },
}

impl Command {
    /// Runs the subcommand to completion.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(args) => serve::run(args).await,
            Command::Config { command } => config::run(&command),
            Command::RenderKeyPolicy(args) => render_key_policy::run(&args),
            Command::RenderIamPolicy(args) => render_iam_policy::run(&args),
            Command::Keys { socket, command } => keys::run(&socket, command).await,
            Command::Channels { socket, command } => channels::run(&socket, command).await,
            Command::Import { socket, command } => import::run(&socket, command).await,
        }
    }
}

/// Prints a successful answer as JSON on stdout; an error answer becomes a failure
/// with its code and message.
async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<()> {
    let answer = request(socket, method, path, body).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// One API call: a successful answer's JSON; an error answer becomes a failure with its
/// code and message.
async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (status, answer) = request_once(socket, method, path, body.as_ref()).await?;
    if status.is_success() {
        return Ok(answer);
    }
    let code = answer["error"]["code"].as_str().unwrap_or("unknown");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    if status == StatusCode::NOT_FOUND && code == "not_found" {
        bail!(
            "{socket} does not serve {path}; is it an older signer-host?",
            socket = socket.display()
        );
    }
    bail!("{code} ({status}): {message}")
}
