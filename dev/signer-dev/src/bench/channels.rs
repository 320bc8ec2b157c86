//! Channel acquire+release throughput over the host API at a given pool size: other
//! hosts, in this process, on a database of their own (SQLite, or PostgreSQL shared by
//! one or three hosts) filled with that many channel accounts.
//! Acquire and release touch only the store, so the accounts need no real keys.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::wire::transport::Endpoint;
use hyper::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use host::api_client::request_once;
use host::config::{SecretString, StoreConfig};
use host::server::BoundHost;
use host::store::{KeyFormat, KeyRole, KeyState, LockLimits, NewKey};

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

/// Where the benchmark's pool lives.
#[derive(Debug, Clone, Copy)]
pub enum PoolStore<'a> {
    /// A SQLite file in the scratch directory.
    Sqlite,
    /// A database the benchmark creates on this PostgreSQL server (the URL of any
    /// database there, as a role that may create databases) and drops afterwards.
    Postgres { server_url: &'a str },
}

/// The store configuration of a pool of `accounts` placeholder channel accounts, created
/// and filled; `Some(name)` is the PostgreSQL database to drop afterwards.
fn fill(
    store: PoolStore<'_>,
    dir: &Path,
    accounts: u32,
) -> anyhow::Result<(StoreConfig, Option<(String, String)>)> {
    let mut config = StoreConfig {
        path: dir.join("signer.db"),
        ..StoreConfig::default()
    };
    let created = match store {
        PoolStore::Sqlite => None,
        PoolStore::Postgres { server_url } => {
            let name = format!("signer_bench_{:016x}", rand::random::<u64>());
            let mut admin = admin_connection(server_url).with_context(|| {
                format!(
                    "connecting to {}",
                    host::config::redact_url_password(server_url)
                )
            })?;
            admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
            // The server URL with our database in place of its own, parameters kept.
            let (base, query) = server_url.split_once('?').unwrap_or((server_url, ""));
            let (server, _) = base
                .rsplit_once('/')
                .context("the PostgreSQL URL names no database")?;
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            config.url = Some(SecretString(format!("{server}/{name}{query}")));
            Some((server_url.to_string(), name))
        }
    };
    let opened = host::store::open(&config, LockLimits::default())?;
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
        opened.insert_keys(chunk)?;
    }
    Ok((config, created))
}

/// A connection to the server as the host would make it (the same TLS rules).
fn admin_connection(server_url: &str) -> anyhow::Result<postgres::Client> {
    Ok(host::store::PostgresTarget::new(server_url, None)?.connect()?)
}

fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = admin_connection(server_url)?;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    Ok(())
}

/// Pairs per second at `clients` connections spread over `hosts` hosts (in this
/// process, each with its own store connections and writer) sharing a pool of
/// `accounts`.
pub async fn pairs(
    stack: &Stack,
    scratch: &Path,
    pool: (PoolStore<'_>, u32),
    hosts: usize,
    clients: usize,
    pairs: usize,
) -> anyhow::Result<Stats> {
    let (store, accounts) = pool;
    let dir = scratch.join(format!(
        "channels-{accounts}-{hosts}-{}",
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).context("creating the channel benchmark's directory")?;
    let fill_dir = dir.clone();
    let server_url = match store {
        PoolStore::Sqlite => None,
        PoolStore::Postgres { server_url } => Some(server_url.to_string()),
    };
    let (store_config, created) = tokio::task::spawn_blocking(move || {
        let store = match &server_url {
            Some(server_url) => PoolStore::Postgres { server_url },
            None => PoolStore::Sqlite,
        };
        fill(store, &fill_dir, accounts)
    })
    .await??;
    let result = serve_and_measure(stack, &dir, &store_config, hosts, clients, pairs).await;
    if let Some((server_url, name)) = created {
        tokio::task::spawn_blocking(move || drop_database(&server_url, &name)).await??;
    }
    result
}

async fn serve_and_measure(
    stack: &Stack,
    dir: &Path,
    store: &StoreConfig,
    hosts: usize,
    clients: usize,
    pairs: usize,
) -> anyhow::Result<Stats> {
    let shutdown = CancellationToken::new();
    let mut serving = Vec::new();
    let mut sockets = Vec::new();
    for index in 0..hosts {
        let socket = dir.join(format!("host-{index}.sock"));
        let mut config = dev_host_config(HostPaths {
            socket: &socket,
            db: &store.path,
            enclave: &Endpoint::Unix(stack.dir.join("enclave.sock")),
            relay: &Endpoint::Unix(dir.join(format!("kms-relay-{index}.sock"))),
            kms_url: &stack.processes.kms_url,
        });
        config.store = store.clone();
        let host = BoundHost::bind(config).await?;
        serving.push(tokio::spawn(host.run(shutdown.clone())));
        sockets.push(socket);
    }
    let result = async {
        for socket in &sockets {
            wait_for_health(socket).await?;
        }
        measure(clients, pairs, |client| {
            ChannelPairClient::connect(&sockets[client % sockets.len()])
        })
        .await
    }
    .await;
    shutdown.cancel();
    for host in serving {
        let _ = host.await;
    }
    result
}

async fn wait_for_health(socket: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match request_once(socket, Method::GET, "/healthz", None).await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            _ if Instant::now() > deadline => bail!("the channel benchmark's host did not start"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
