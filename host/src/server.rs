//! Runs the host API until shutdown: bind the socket, connect to the enclave, serve,
//! and on a signal stop accepting, let in-flight requests finish within the grace
//! period, remove the socket file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use common::wire::transport::{UnixSocketListener, bind_unix};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::callers::CallerPolicy;
use crate::api::connections::{self, ConnectionLimits};
use crate::api::{AppState, BodyLimits, Shared, router};
use crate::config::{ApiConfig, Config};
use crate::enclave_client::EnclaveClient;
use crate::signing::Signing;
use crate::store::SharedStore;

/// A host whose socket is bound (callers can connect from now on) but not yet serving.
#[derive(Debug)]
pub struct BoundHost {
    config: Config,
    socket: UnixSocketListener,
    store: SharedStore,
}

impl BoundHost {
    pub async fn bind(config: Config) -> anyhow::Result<BoundHost> {
        config.validate()?;
        // Open the store first: a bad database (e.g. a newer schema) must stop start-up
        // before callers can connect. Off the async workers: store calls block.
        let (store_config, limits) = (config.store.clone(), config.channels.lock_limits());
        let store = tokio::task::spawn_blocking(move || crate::store::open(&store_config, limits))
            .await
            .context("opening the store")??;
        if let Some(parent) = config.api.socket.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let socket = bind_unix(&config.api.socket, config.api.socket_mode.0)
            .with_context(|| format!("binding the API socket {}", config.api.socket.display()))?;
        set_socket_ownership(&config.api)?;
        Ok(BoundHost {
            config,
            socket,
            store,
        })
    }

    pub fn socket_path(&self) -> PathBuf {
        self.config.api.socket.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let BoundHost {
            config,
            socket,
            store,
        } = self;
        let UnixSocketListener { listener, cleanup } = socket;
        // The enclave connection outlives the drain so in-flight requests can finish.
        let enclave_stop = CancellationToken::new();
        let enclave = EnclaveClient::start(
            config.enclave.endpoint.clone(),
            config.enclave.request_timeout(),
            config.enclave.reconnect_max_backoff(),
            enclave_stop.clone(),
        );
        let credentials = start_kms_relay(&config, &enclave, &enclave_stop).await?;
        let signing = Signing::new(
            enclave.clone(),
            store.clone(),
            config.stellar.network_passphrase.clone(),
            &config.signing_policy,
            config.enclave.precheck_signing_policy,
        )
        .map_err(|problem| anyhow::anyhow!("signing_policy: {problem}"))?;
        let canary = (config.readiness.canary_period_secs > 0).then(|| {
            crate::readiness::spawn_canary(
                Duration::from_secs(config.readiness.canary_period_secs),
                config.enclave.request_timeout(),
                signing.clone(),
                store.clone(),
                enclave_stop.clone(),
            )
        });
        let store_description = store.describe();
        let state = AppState::new(Shared {
            enclave,
            store,
            signing,
            shutdown: shutdown.clone(),
            credentials,
            canary,
            readiness: Default::default(),
        });
        let callers = CallerPolicy::new(config.api.callers.clone());
        let app = router(state, BodyLimits::of(&config.api), callers.clone());
        let limits = ConnectionLimits::of(&config.api);
        info!(
            socket = %config.api.socket.display(),
            mode = format!("{:04o}", config.api.socket_mode.0),
            callers = ?config.api.callers,
            enclave = %config.enclave.endpoint,
            store = %store_description,
            version = env!("CARGO_PKG_VERSION"),
            "signer-host listening"
        );
        let stop_accepting = shutdown.clone();
        let mut serving = tokio::spawn(connections::serve(
            listener,
            app,
            limits,
            callers,
            stop_accepting,
        ));
        let early_exit = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            finished = &mut serving => Some(finished),
        };
        if let Some(finished) = early_exit {
            enclave_stop.cancel();
            return match finished {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e).context("serving the host API"),
                Err(e) => Err(e).context("host API task"),
            };
        }
        // Nobody new can reach us from here on.
        drop(cleanup);
        let grace = config.api.shutdown_grace();
        info!(?grace, "shutting down: finishing in-flight requests");
        if tokio::time::timeout(grace, &mut serving).await.is_ok() {
            info!("all requests finished");
        } else {
            warn!(
                ?grace,
                "requests still running after the grace period; abandoning them"
            );
            serving.abort();
        }
        enclave_stop.cancel();
        Ok(())
    }
}

/// The KMS relay and the credentials pusher, when `[kms]` names a region; the
/// pusher's status for `/readyz`.
async fn start_kms_relay(
    config: &Config,
    enclave: &EnclaveClient,
    stop: &CancellationToken,
) -> anyhow::Result<Option<std::sync::Arc<crate::readiness::CredentialsStatus>>> {
    let Some(url) = config.kms.endpoint_url() else {
        return Ok(None);
    };
    let target = crate::relay::RelayTarget::from_url(&url).map_err(anyhow::Error::msg)?;
    let relay = common::wire::transport::Listener::bind(&config.kms.relay_listen, 0o600)
        .with_context(|| format!("binding the KMS relay {}", config.kms.relay_listen))?;
    tokio::spawn(crate::relay::run(
        relay,
        target,
        crate::relay::MAX_RELAYED,
        stop.clone(),
    ));
    let status = crate::credentials::spawn(&config.kms, enclave.clone(), stop.clone()).await?;
    Ok(Some(status))
}

/// Gives the API socket file its configured owner and group (names or numeric ids).
fn set_socket_ownership(api: &ApiConfig) -> anyhow::Result<()> {
    use nix::unistd::{Gid, Group, Uid, User};
    let owner = resolve_id(api.socket_owner.as_deref(), "api.socket_owner", |name| {
        Ok(User::from_name(name)?.map(|user| user.uid.as_raw()))
    })?
    .map(Uid::from_raw);
    let group = resolve_id(api.socket_group.as_deref(), "api.socket_group", |name| {
        Ok(Group::from_name(name)?.map(|group| group.gid.as_raw()))
    })?
    .map(Gid::from_raw);
    if owner.is_some() || group.is_some() {
        nix::unistd::chown(&api.socket, owner, group).with_context(|| {
            format!(
                "giving {} owner {owner:?} and group {group:?}",
                api.socket.display()
            )
        })?;
    }
    Ok(())
}

/// A numeric id as given, or the id `lookup` finds for a name.
fn resolve_id(
    name: Option<&str>,
    field: &str,
    lookup: impl Fn(&str) -> nix::Result<Option<u32>>,
) -> anyhow::Result<Option<u32>> {
    let Some(name) = name else {
        return Ok(None);
    };
    if let Ok(id) = name.parse::<u32>() {
        return Ok(Some(id));
    }
    lookup(name)
        .with_context(|| format!("{field}: looking up {name:?}"))?
        .with_context(|| format!("{field}: no such name {name:?}"))
        .map(Some)
}

/// A token cancelled by the first SIGTERM or SIGINT. The handlers are registered before
/// this returns, so no signal sent afterwards is lost.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    match common::signal::ShutdownSignals::install() {
        Ok(mut signals) => {
            tokio::spawn(async move {
                let signal = signals.recv().await;
                info!(signal, "shutting down");
                trigger.cancel();
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; shutting down");
            trigger.cancel();
        }
    }
    token
}
