//! Hands the enclave short-lived AWS credentials for its own KMS calls: resolved here
//! with aws-config's default chain (the instance role on Nitro), pushed over vsock on
//! every (re)connection and on a timer well inside their lifetime.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::provider::ProvideCredentials;
use common::wire::messages::{AwsCredentials, Request};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{CredentialsSource, KmsConfig};
use crate::enclave_client::EnclaveClient;
use crate::readiness::CredentialsStatus;

enum Source {
    Chain(aws_credential_types::provider::SharedCredentialsProvider),
    Static(AwsCredentials),
}

impl Source {
    async fn resolve(&self) -> Result<AwsCredentials, String> {
        match self {
            Source::Static(c) => Ok(c.clone()),
            Source::Chain(provider) => {
                let c = provider
                    .provide_credentials()
                    .await
                    .map_err(|e| common::error_chain(&e))?;
                Ok(AwsCredentials {
                    access_key_id: c.access_key_id().to_string(),
                    secret_access_key: c.secret_access_key().to_string(),
                    session_token: c.session_token().map(str::to_string),
                    expires_unix: c
                        .expiry()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                })
            }
        }
    }
}

/// Starts the pusher; returns at once, with the status `/readyz` reads.
pub async fn spawn(
    config: &KmsConfig,
    enclave: EnclaveClient,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<CredentialsStatus>> {
    let source = match config.credentials {
        CredentialsSource::Static => Source::Static(AwsCredentials {
            access_key_id: config.static_access_key_id.clone().unwrap_or_default(),
            secret_access_key: config
                .static_secret_access_key
                .as_ref()
                .map(|s| s.0.clone())
                .unwrap_or_default(),
            session_token: None,
            expires_unix: None,
        }),
        CredentialsSource::DefaultChain => {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(region) = &config.region {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            let sdk = loader.load().await;
            let provider = sdk
                .credentials_provider()
                .ok_or_else(|| anyhow::anyhow!("aws-config found no credentials provider"))?;
            Source::Chain(provider)
        }
    };
    let refresh = Duration::from_secs(config.credentials_refresh_secs.max(10));
    let status = Arc::new(CredentialsStatus::default());
    let pushes = status.clone();
    tokio::spawn(async move {
        let mut connections = enclave.connections();
        loop {
            match source.resolve().await {
                Ok(credentials) => {
                    let key = credentials.access_key_id.clone();
                    let expires_unix = credentials.expires_unix;
                    // Read before the push: a reconnection in between leaves the status
                    // behind (not ready) until the push its reconnection triggers.
                    let connection = *connections.borrow_and_update();
                    match enclave.call(Request::SetCredentials(credentials)).await {
                        Ok(_) => {
                            debug!(access_key_id = %key, "pushed AWS credentials to the enclave");
                            pushes.pushed(connection, expires_unix);
                        }
                        Err(e) => {
                            debug!(error = %e, "could not push credentials yet");
                            pushes.failed(format!("pushing to the enclave: {e}"));
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot resolve AWS credentials for the enclave");
                    pushes.failed(format!("resolving AWS credentials: {e}"));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(refresh) => {}
                changed = connections.changed() => {
                    if changed.is_err() { return; }
                    info!("enclave (re)connected; pushing credentials");
                }
            }
        }
    });
    Ok(status)
}
