//! `signer-host`'s subcommands, one file each. `serve` runs the host; the others either
//! render deployment artifacts or call a running host over its API socket (so they
//! work with the same permissions as any host service and never touch the database
//! behind the host's back).

pub mod attestation;
pub mod channels;
pub mod channels_ensure;
pub mod config;
pub mod fee_bump;
pub mod import;
pub mod keys;
mod output;
pub mod render_iam_policy;
pub mod render_key_policy;
pub mod serve;
pub mod sign;
pub mod soroban;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::api_client::request_once;
use crate::config::DEFAULT_API_SOCKET;

/// Where a client subcommand finds the running host.
#[derive(Debug, Clone, Args)]
pub struct SocketArg {
    /// The host API socket.
    #[arg(long, env = "SIGNER_HOST_SOCKET", default_value = DEFAULT_API_SOCKET)]
    pub socket: PathBuf,
}

/// A running host and how to show its answers.
#[derive(Debug, Clone)]
pub struct Api {
    pub socket: PathBuf,
    /// JSON on stdout (for scripts) instead of aligned `field  value` lines.
    pub json: bool,
}

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
    // Their help is the argument structs' own (with examples).
    Sign(sign::SignArgs),
    FeeBump(fee_bump::FeeBumpArgs),
    /// Soroban authorization entries (calls a running host).
    Soroban {
        #[command(flatten)]
        target: SocketArg,
        #[command(subcommand)]
        command: soroban::SorobanCommand,
    },
    /// Stored keys (calls a running host).
    Keys {
        #[command(flatten)]
        target: SocketArg,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Import existing keys (calls a running host).
    Import {
        #[command(flatten)]
        target: SocketArg,
        #[command(subcommand)]
        command: import::ImportCommand,
    },
    /// The channel-account pool (calls a running host).
    Channels {
        #[command(flatten)]
        target: SocketArg,
        #[command(subcommand)]
        command: channels::ChannelsCommand,
    },
    /// Which enclave build the host talks to: fetch a fresh attestation document, or
    /// verify one.
    Attestation {
        #[command(subcommand)]
        command: attestation::AttestationCommand,
    },
}

impl Command {
    /// Runs the subcommand to completion; `json` selects JSON output for the commands
    /// that call a running host.
    pub async fn run(self, json: bool) -> anyhow::Result<()> {
        let api = |target: SocketArg| Api {
            socket: target.socket,
            json,
        };
        match self {
            Command::Serve(args) => serve::run(args).await,
            Command::Config { command } => config::run(&command),
            Command::RenderKeyPolicy(args) => render_key_policy::run(&args),
            Command::RenderIamPolicy(args) => render_iam_policy::run(&args),
            Command::Sign(args) => sign::run(&api(args.target.clone()), args).await,
            Command::FeeBump(args) => fee_bump::run(&api(args.target.clone()), args).await,
            Command::Soroban { target, command } => soroban::run(&api(target), command).await,
            Command::Keys { target, command } => keys::run(&api(target), command).await,
            Command::Channels { target, command } => channels::run(&api(target), command).await,
            Command::Import { target, command } => import::run(&api(target), command).await,
            Command::Attestation { command } => attestation::run(json, command).await,
        }
    }
}

/// Prints a successful answer (JSON, or aligned lines for people); an error answer
/// becomes a failure with its code and message.
async fn call(api: &Api, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<()> {
    let answer = request(&api.socket, method, path, body).await?;
    print_answer(api.json, &answer)
}

/// Prints `answer` as pretty JSON or as aligned `field  value` lines.
fn print_answer(json: bool, answer: &Value) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
    } else {
        print!("{}", output::human(answer));
    }
    Ok(())
}

/// An argument that may be `-` or absent for standard input (XDR, a document), trimmed.
fn argument_or_stdin(argument: Option<&str>, what: &str) -> anyhow::Result<String> {
    let text = match argument {
        None | Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("reading {what} from standard input"))?;
            text
        }
        Some(text) => text.to_string(),
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        bail!("no {what}: give it as an argument or on standard input");
    }
    Ok(text)
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
