//! `signer-host channels ensure N`: brings the channel pool to N accounts on the ledger.
//!
//! Growing: the missing channel keys are generated in the enclave and stored `pending`
//! before anything else, so no funded account is ever without its key. Then, for at
//! most 19 accounts per transaction, the host builds and the enclave signs the
//! sponsored creation; the host records it on the keys before handing it out. With
//! Stellar RPC the transaction is submitted and confirmed and the accounts become
//! `active`; without, the envelopes are printed for the operator, and `channels
//! activate` marks the accounts once they are seen.
//!
//! Shrinking: idle accounts are withdrawn from the pool (never a locked one; their keys
//! wait, pending, for the merge), merged into the distribution account the same way,
//! and their keys retired (`channels retire` offline).
//!
//! A re-run reconciles `pending` keys against the ledger: an account that is where its
//! key waits for it to be (created: present; merged: gone) is settled; otherwise it is
//! rebuilt only once its last transaction can no longer land (it failed, or a ledger
//! closed after its maxTime), so no account is ever in two live transactions.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::json;

use super::request;
use crate::signing::{MAX_ACCOUNTS_PER_TRANSACTION, MAX_PROVISIONING_WINDOW_SECS};
use crate::stellar_rpc::{StellarRpc, Submission, TransactionOutcome};
use crate::store::LedgerChange;
use common::wire::messages::MAX_GENERATED_KEYS;

/// How often a pending transaction's status is asked for.
const POLL: Duration = Duration::from_millis(500);
/// `TRY_AGAIN_LATER` answers tolerated per transaction.
const MAX_TRY_AGAIN: u32 = 10;

/// Arguments of `channels ensure`.
#[derive(Debug, clap::Args)]
pub struct EnsureArgs {
    /// How many channel accounts the pool should hold.
    pub count: usize,
    /// Stellar RPC endpoint (overrides `[stellar] rpc_url` of --config).
    #[arg(long, env = "SIGNER_STELLAR_RPC_URL")]
    pub rpc_url: Option<String>,
    /// The host's configuration file, for `[stellar] rpc_url`.
    #[arg(long, env = "SIGNER_HOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Without RPC: the distribution account's current sequence number. The signed
    /// envelopes are printed, one per line, for you to submit; then run
    /// `signer-host channels activate` with the accounts once they are on the ledger.
    #[arg(long)]
    pub sequence: Option<i64>,
    /// Seconds until each transaction's maxTime (at most 300).
    #[arg(long, default_value_t = MAX_PROVISIONING_WINDOW_SECS)]
    pub max_time_secs: u64,
    /// Fee per operation in stroops.
    #[arg(long, default_value_t = 100)]
    pub fee_per_operation: u32,
    /// Seconds an RPC call may take.
    #[arg(long, default_value_t = 30)]
    pub rpc_timeout_secs: u64,
}

/// A stored channel key as the API lists it.
#[derive(Debug, Clone)]
struct ChannelKey {
    public_key: String,
    state: String,
    /// `None`: an imported key waiting for its verification, not for the ledger.
    pending_for: Option<LedgerChange>,
    provisioning: Option<(String, u64)>,
}

/// The API routes and words of one direction.
struct Direction {
    sign: &'static str,
    settle: &'static str,
    settled: &'static str,
    noun: &'static str,
    done: &'static str,
    cli: &'static str,
}

fn direction(purpose: LedgerChange) -> Direction {
    match purpose {
        LedgerChange::Creation => Direction {
            sign: "/v1/channels/provision",
            settle: "/v1/channels/activate",
            settled: "activated",
            noun: "creation",
            done: "created",
            cli: "activate",
        },
        LedgerChange::Merge => Direction {
            sign: "/v1/channels/merge",
            settle: "/v1/channels/retire",
            settled: "retired",
            noun: "merge",
            done: "merged",
            cli: "retire",
        },
    }
}

/// Runs `channels ensure`.
pub async fn run(socket: &Path, args: EnsureArgs) -> anyhow::Result<()> {
    let rpc_url = match (&args.rpc_url, &args.config) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(path)) => crate::config::Config::load(path)?.stellar.rpc_url,
        (None, None) => None,
    };
    if args.max_time_secs == 0 || args.max_time_secs > MAX_PROVISIONING_WINDOW_SECS {
        bail!("--max-time-secs: 1 to {MAX_PROVISIONING_WINDOW_SECS}");
    }
    let mut run = match (rpc_url, args.sequence) {
        (Some(url), None) => {
            let rpc = StellarRpc::new(&url, Duration::from_secs(args.rpc_timeout_secs))?;
            Ensure::online(socket, rpc, &args).await?
        }
        (None, Some(sequence)) => Ensure::offline(socket, sequence, &args),
        (Some(_), Some(_)) => bail!("give --sequence only without a Stellar RPC endpoint"),
        (None, None) => bail!(
            "no Stellar RPC endpoint: set [stellar] rpc_url (--config), --rpc-url or \
             SIGNER_STELLAR_RPC_URL, or give --sequence to sign offline"
        ),
    };
    run.ensure(args.count).await
}

/// One run of `ensure`.
struct Ensure<'a> {
    socket: &'a Path,
    rpc: Option<StellarRpc>,
    /// The network, as the RPC endpoint reports it (`None`: the host's configured one).
    network: Option<String>,
    /// Offline: the sequence the next transaction follows.
    offline_sequence: i64,
    max_time_secs: u64,
    fee_per_operation: u32,
    progress: Progress,
    activated: usize,
    retired: usize,
}

impl<'a> Ensure<'a> {
    async fn online(
        socket: &'a Path,
        rpc: StellarRpc,
        args: &EnsureArgs,
    ) -> anyhow::Result<Ensure<'a>> {
        let network = rpc.network().await?;
        let mut run = Ensure::offline(socket, 0, args);
        run.network = Some(network.passphrase);
        run.rpc = Some(rpc);
        Ok(run)
    }

    fn offline(socket: &'a Path, sequence: i64, args: &EnsureArgs) -> Ensure<'a> {
        Ensure {
            socket,
            rpc: None,
            network: None,
            offline_sequence: sequence,
            max_time_secs: args.max_time_secs,
            fee_per_operation: args.fee_per_operation,
            progress: Progress::new(),
            activated: 0,
            retired: 0,
        }
    }

    async fn ensure(&mut self, count: usize) -> anyhow::Result<()> {
        let keys = self.channel_keys().await?;
        let active = keys.iter().filter(|k| k.state == "active").count();
        let (creating, merging): (Vec<ChannelKey>, Vec<ChannelKey>) = keys
            .into_iter()
            .filter(|k| k.state == "pending")
            .filter(|k| k.pending_for.is_some())
            .partition(|k| k.pending_for == Some(LedgerChange::Creation));
        // An earlier run's merges finish first: those accounts already left the pool.
        let to_merge = self.reconcile(LedgerChange::Merge, merging).await?;
        self.run_batches(LedgerChange::Merge, &to_merge).await?;
        let mut to_create = self.reconcile(LedgerChange::Creation, creating).await?;
        let known = active + self.activated + to_create.len();
        if count > known {
            to_create.extend(self.generate(count - known).await?);
        }
        // A pending key beyond the count is still created: its key exists, and an
        // account that may already be funded is never dropped. Any surplus is merged.
        self.run_batches(LedgerChange::Creation, &to_create).await?;
        let total = self.pool_total().await?;
        if total > count {
            let withdrawn = self.withdraw(total - count).await?;
            if withdrawn.len() < total - count {
                self.progress.line(&format!(
                    "{} surplus accounts are locked (in use); re-run to merge them once free",
                    total - count - withdrawn.len()
                ));
            }
            self.run_batches(LedgerChange::Merge, &withdrawn).await?;
        }
        eprintln!(
            "channel pool: {} accounts ({} activated, {} retired in this run)",
            self.pool_total().await?,
            self.activated,
            self.retired
        );
        Ok(())
    }

    async fn run_batches(
        &mut self,
        purpose: LedgerChange,
        accounts: &[String],
    ) -> anyhow::Result<()> {
        if accounts.is_empty() {
            return Ok(());
        }
        self.progress.start(accounts.len(), direction(purpose).noun);
        for batch in accounts.chunks(MAX_ACCOUNTS_PER_TRANSACTION) {
            self.run_batch(purpose, batch).await?;
        }
        self.progress.finish();
        Ok(())
    }

    /// Pending keys against the ledger: those whose account is where the key waits for
    /// it to be are settled; those whose last transaction can no longer land (or that
    /// have none) are returned to be (re)built; the rest are waited for.
    async fn reconcile(
        &mut self,
        purpose: LedgerChange,
        pending: Vec<ChannelKey>,
    ) -> anyhow::Result<Vec<String>> {
        let Some(rpc) = &self.rpc else {
            let now = common::now_unix_secs();
            let (waiting, ready): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|k| k.provisioning.as_ref().is_some_and(|(_, max)| *max >= now));
            if !waiting.is_empty() {
                eprintln!(
                    "{} pending accounts were signed into transactions that may still land; \
                     once applied, run `signer-host channels {}`",
                    waiting.len(),
                    direction(purpose).cli
                );
            }
            return Ok(ready.into_iter().map(|k| k.public_key).collect());
        };
        let mut rebuild = Vec::new();
        let mut unsettled = pending;
        while !unsettled.is_empty() {
            let raw = unsettled
                .iter()
                .map(|k| raw_key(&k.public_key))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let present = rpc.accounts(&raw).await?;
            let (arrived, open): (Vec<_>, Vec<_>) = unsettled.into_iter().partition(|k| {
                let on_ledger = raw_key(&k.public_key).is_ok_and(|r| present.contains_key(&r));
                on_ledger == (purpose == LedgerChange::Creation)
            });
            let arrived = arrived.into_iter().map(|k| k.public_key).collect();
            let settled = settle(self.socket, purpose, arrived).await?;
            match purpose {
                LedgerChange::Creation => self.activated += settled,
                LedgerChange::Merge => self.retired += settled,
            }
            let mut still_open = Vec::new();
            for key in open {
                let Some((hash, max_time)) = &key.provisioning else {
                    rebuild.push(key.public_key);
                    continue;
                };
                let status = rpc.transaction(hash).await?;
                let can_still_land = match status.outcome {
                    TransactionOutcome::Success { .. } | TransactionOutcome::Failed { .. } => false,
                    TransactionOutcome::NotFound => status.latest_ledger_close_time <= *max_time,
                };
                if can_still_land {
                    still_open.push(key);
                } else {
                    rebuild.push(key.public_key);
                }
            }
            if !still_open.is_empty() {
                self.progress.line(&format!(
                    "{} pending accounts are in a transaction that may still land; waiting \
                     for it or for its maxTime to pass",
                    still_open.len()
                ));
                tokio::time::sleep(POLL * 2).await;
            }
            unsettled = still_open;
        }
        Ok(rebuild)
    }

    fn count_settled(&mut self, purpose: LedgerChange, settled: usize) {
        match purpose {
            LedgerChange::Creation => self.activated += settled,
            LedgerChange::Merge => self.retired += settled,
        }
    }

    /// Generates `count` pending channel keys in the enclave, stored before anything
    /// else happens.
    async fn generate(&mut self, count: usize) -> anyhow::Result<Vec<String>> {
        let mut generated = Vec::with_capacity(count);
        let mut left = count;
        while left > 0 {
            let chunk = left.min(MAX_GENERATED_KEYS as usize);
            let body = json!({ "role": "channel", "count": chunk, "state": "pending" });
            let answer =
                request(self.socket, Method::POST, "/v1/keys/generate", Some(body)).await?;
            let keys = answer["keys"].as_array().context("generate: no keys")?;
            for key in keys {
                let public_key = key["public_key"]
                    .as_str()
                    .context("generate: no public_key")?;
                generated.push(public_key.to_string());
            }
            left -= chunk;
            self.progress.line(&format!(
                "generated {chunk} channel keys in the enclave (pending)"
            ));
        }
        Ok(generated)
    }

    /// Takes up to `count` idle accounts out of the pool.
    async fn withdraw(&mut self, count: usize) -> anyhow::Result<Vec<String>> {
        let body = json!({ "count": count });
        let answer = request(
            self.socket,
            Method::POST,
            "/v1/channels/withdraw",
            Some(body),
        )
        .await?;
        let accounts = answer["accounts"]
            .as_array()
            .context("withdraw: no accounts")?;
        accounts
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .context("withdraw: not an account")
            })
            .collect()
    }

    /// Signs, and with RPC submits and confirms, one creation or merge transaction.
    async fn run_batch(
        &mut self,
        purpose: LedgerChange,
        accounts: &[String],
    ) -> anyhow::Result<()> {
        let words = direction(purpose);
        let sequence = match &self.rpc {
            Some(rpc) => {
                let distribution = self.distribution().await?;
                let raw = raw_key(&distribution)?;
                let found = rpc.accounts(&[raw]).await?;
                let Some(account) = found.get(&raw) else {
                    bail!(
                        "the distribution account {distribution} is not on the ledger; fund it first"
                    );
                };
                account.sequence
            }
            None => self.offline_sequence,
        };
        let body = json!({
            "accounts": accounts,
            "sequence": sequence.to_string(),
            "max_time_secs": self.max_time_secs,
            "fee_per_operation": self.fee_per_operation,
            "network_passphrase": self.network,
        });
        let signed = request(self.socket, Method::POST, words.sign, Some(body)).await?;
        let envelope = signed["transaction"].as_str().context("no transaction")?;
        let hash = signed["tx_hash"]
            .as_str()
            .context("no tx_hash")?
            .to_string();
        let max_time = signed["max_time"].as_u64().context("no max_time")?;
        let Some(rpc) = &self.rpc else {
            self.offline_sequence += 1;
            println!("{envelope}");
            self.progress.line(&format!(
                "signed the {} of {} accounts (tx {hash}, sequence {}); submit it, then \
                 `signer-host channels {} {}`",
                words.noun,
                accounts.len(),
                sequence + 1,
                words.cli,
                accounts.join(" ")
            ));
            self.progress.advance(accounts.len());
            return Ok(());
        };
        submit(rpc, envelope).await.with_context(|| {
            format!(
                "transaction {hash} was refused; its {} accounts stay pending, and a re-run \
                 rebuilds it once its maxTime ({max_time}) has passed",
                accounts.len()
            )
        })?;
        self.progress.line(&format!(
            "submitted the {} of {} accounts (tx {hash})",
            words.noun,
            accounts.len()
        ));
        let ledger = confirm(rpc, &hash, max_time).await?;
        let settled = settle(self.socket, purpose, accounts.to_vec()).await?;
        self.count_settled(purpose, settled);
        self.progress.line(&format!(
            "{} {} accounts in ledger {ledger} (tx {hash})",
            words.done,
            accounts.len()
        ));
        self.progress.advance(accounts.len());
        Ok(())
    }

    async fn channel_keys(&self) -> anyhow::Result<Vec<ChannelKey>> {
        let answer = request(self.socket, Method::GET, "/v1/keys?role=channel", None).await?;
        let keys = answer["keys"].as_array().context("keys: no list")?;
        keys.iter()
            .map(|key| {
                let provisioning = match (
                    key["provisioning"]["tx_hash"].as_str(),
                    key["provisioning"]["max_time"].as_u64(),
                ) {
                    (Some(hash), Some(max_time)) => Some((hash.to_string(), max_time)),
                    _ => None,
                };
                let pending_for = match key["pending_for"].as_str() {
                    Some("merge") => Some(LedgerChange::Merge),
                    Some("verification") => None,
                    _ => Some(LedgerChange::Creation),
                };
                Ok(ChannelKey {
                    public_key: key["public_key"]
                        .as_str()
                        .context("keys: no public_key")?
                        .into(),
                    state: key["state"].as_str().context("keys: no state")?.into(),
                    pending_for,
                    provisioning,
                })
            })
            .collect()
    }

    async fn pool_total(&self) -> anyhow::Result<usize> {
        let summary = request(self.socket, Method::GET, "/v1/channels", None).await?;
        let total = summary["total"].as_u64().context("channels: no total")?;
        Ok(usize::try_from(total).unwrap_or(usize::MAX))
    }

    async fn distribution(&self) -> anyhow::Result<String> {
        let answer = request(self.socket, Method::GET, "/v1/keys?role=distribution", None).await?;
        answer["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["state"] == "active"))
            .and_then(|k| k["public_key"].as_str())
            .map(str::to_string)
            .context("no active distribution key: generate or register one first")
    }
}

/// Settles pending channel keys (creation: active; merge: retired); how many were
/// pending.
async fn settle(
    socket: &Path,
    purpose: LedgerChange,
    accounts: Vec<String>,
) -> anyhow::Result<usize> {
    let words = direction(purpose);
    let mut settled = 0;
    for chunk in accounts.chunks(1000) {
        let body = json!({ "accounts": chunk });
        let answer = request(socket, Method::POST, words.settle, Some(body)).await?;
        settled += answer[words.settled].as_array().map_or(0, Vec::len);
    }
    Ok(settled)
}

/// Sends the envelope until it is accepted.
async fn submit(rpc: &StellarRpc, envelope: &str) -> anyhow::Result<()> {
    for _ in 0..MAX_TRY_AGAIN {
        match rpc.send_transaction(envelope).await? {
            Submission::Accepted => return Ok(()),
            Submission::TryAgainLater => tokio::time::sleep(POLL * 2).await,
            Submission::Refused { result } => bail!("the network refused it: {result}"),
        }
    }
    bail!("Stellar RPC answered TRY_AGAIN_LATER {MAX_TRY_AGAIN} times")
}

/// Waits until the transaction is applied (its ledger) or can no longer be.
async fn confirm(rpc: &StellarRpc, hash: &str, max_time: u64) -> anyhow::Result<u32> {
    loop {
        let status = rpc.transaction(hash).await?;
        match status.outcome {
            TransactionOutcome::Success { ledger } => return Ok(ledger),
            TransactionOutcome::Failed { ledger, result } => {
                bail!("transaction {hash} failed in ledger {ledger}: {result}")
            }
            TransactionOutcome::NotFound if status.latest_ledger_close_time > max_time => {
                bail!(
                    "transaction {hash} expired unapplied (maxTime {max_time}); re-run to rebuild it"
                )
            }
            TransactionOutcome::NotFound => tokio::time::sleep(POLL).await,
        }
    }
}

fn raw_key(public_key: &str) -> anyhow::Result<[u8; 32]> {
    Ok(stellar_strkey::ed25519::PublicKey::from_string(public_key)
        .with_context(|| format!("{public_key} is not a G... key"))?
        .0)
}

/// A progress bar on a terminal; one line per step otherwise, on stderr (stdout carries
/// only the envelopes of an offline run).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        Progress { bar: None }
    }

    fn start(&mut self, total: usize, what: &str) {
        if total > 0 && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            let template = format!("{what} {{bar:40}} {{pos}}/{{len}} accounts {{msg}}");
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(text.to_string()),
            None => eprintln!("{text}"),
        }
    }

    fn advance(&self, accounts: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(accounts as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
