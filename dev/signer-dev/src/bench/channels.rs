//! Channel acquire+release throughput over the host API at a given pool size: a second
//! host, in this process, on its own database filled with that many channel accounts.
//! Acquire and release touch only the store, so the accounts need no real keys.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::wire::transport::Endpoint;
use hyper::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use host::api_client::request_once;
use host::server::BoundHost;
use host::store::{KeyFormat, KeyRole, KeyState, KeyStore, LockLimits, NewKey, SqliteStore};

use super::load::{ChannelPairClient, Stats, measure};
use super::stack::Stack;
use crate::up::{HostPaths, dev_host_config};

/// A placeholder account for channel number `i` (distinct, valid strkeys).
fn placeholder_account(i: u32) -> String {
    let mut raw = [0u8; 32];
    raw[..4].copy_from_slice(&i.to_be_bytes());
    raw[31] = 0xc4;
    format!("{}", stellar_strkey::ed25519::PublicKey(raw))
}

fn fill(db: &Path, accounts: u32) -> anyhow::Result<()> {
    let store = SqliteStore::open(db, LockLimits::default(), Duration::from_secs(5))?;
    let keys: Vec<NewKey> = (0..accounts)
        .map(|i| NewKey {
            public_key: placeholder_account(i),
            role: KeyRole::Channel,
            format: KeyFormat::KmsDirect,
            kms_key_id: "alias/signer-dev-bench".to_string(),
            kms_ciphertext: vec![0xbe; 16],
            sealed_seed: None,
            state: KeyState::Active,
            pending_for: None,
        })
        .collect();
    for chunk in keys.chunks(1000) {
        store.insert_keys(chunk)?;
    }
    Ok(())
}

/// Pairs per second at `clients` connections over a pool of `accounts`.
pub async fn pairs(
    stack: &Stack,
    scratch: &Path,
    accounts: u32,
    clients: usize,
    pairs: usize,
) -> anyhow::Result<Stats> {
    let dir = scratch.join(format!("channels-{accounts}"));
    std::fs::create_dir_all(&dir).context("creating the channel benchmark's directory")?;
    let db = dir.join("signer.db");
    fill(&db, accounts)?;
    let socket = dir.join("host.sock");
    let config = dev_host_config(HostPaths {
        socket: &socket,
        db: &db,
        enclave: &Endpoint::Unix(stack.dir.join("enclave.sock")),
        relay: &Endpoint::Unix(dir.join("kms-relay.sock")),
        kms_url: &stack.processes.kms_url,
    });
    let host = BoundHost::bind(config).await?;
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(host.run(shutdown.clone()));
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match request_once(&socket, Method::GET, "/healthz", None).await {
                Ok((StatusCode::OK, _)) => break,
                _ if Instant::now() > deadline => {
                    bail!("the channel benchmark's host did not start")
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        measure(clients, pairs, |_| ChannelPairClient::connect(&socket)).await
    }
    .await;
    shutdown.cancel();
    let _ = serving.await;
    result
}
