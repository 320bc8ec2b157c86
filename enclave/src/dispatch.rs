//! Turns one request into one response by handing it to its operation in [`crate::ops`].
//! Each request runs in its own task (see [`crate::server`]), so a slow one (a KMS round
//! trip) never holds up the others.

use std::sync::Arc;

use common::wire::messages::{Request, Response};
use common::wire::{ErrorCode, WireError};

use crate::BUILD_FLAVOR;
use crate::context::SigningContext;
use crate::ops;

/// Upper bound for the test-only `Ping` delay, so a mistaken value cannot park a task
/// for hours.
#[cfg(feature = "mock")]
const MAX_TEST_DELAY_MS: u32 = 30_000;

/// Answers requests; without a signing context only `Ping` succeeds.
#[derive(Default)]
pub struct Dispatcher {
    /// Shared with the background work a request may start (a key cache's refresh ahead).
    context: Option<Arc<SigningContext>>,
}

impl Dispatcher {
    /// A dispatcher that signs with `context`, or only answers pings without one.
    pub fn new(context: Option<SigningContext>) -> Self {
        Self {
            context: context.map(Arc::new),
        }
    }

    /// The answer to one request.
    pub async fn handle(&self, request: Request) -> Result<Response, WireError> {
        match request {
            Request::Ping { delay_ms } => ping(delay_ms).await,
            Request::SetCredentials(credentials) => {
                ops::credentials::set_credentials(self.context()?, credentials)
            }
            Request::Sign {
                network_passphrase,
                transaction,
                signers,
            } => {
                ops::sign::sign_transaction(
                    self.context()?,
                    &network_passphrase,
                    &transaction,
                    &signers,
                )
                .await
            }
            Request::AuthorizeSoroban {
                network_passphrase,
                entry,
                signature_expiration_ledger,
                signer,
            } => {
                ops::soroban::authorize_soroban(
                    self.context()?,
                    &network_passphrase,
                    &entry,
                    signature_expiration_ledger,
                    &signer,
                )
                .await
            }
            Request::GenerateKeys { count } => {
                ops::generate::generate_keys(self.context()?, count).await
            }
            Request::VerifyKey { key } => ops::verify_key::verify_key(self.context()?, &key).await,
            Request::RewrapKey { key } => ops::rewrap::rewrap_key(self.context()?, &key).await,
            Request::ImportWalletBackend {
                passphrase_ciphertext,
                channels,
            } => {
                ops::import::import_wallet_backend(
                    self.context()?,
                    &passphrase_ciphertext,
                    &channels,
                )
                .await
            }
            Request::Stats => Ok(Response::Stats(self.context()?.stats())),
            Request::Attest { nonce } => ops::attest::attest(self.context()?, nonce).await,
        }
    }

    fn context(&self) -> Result<&Arc<SigningContext>, WireError> {
        self.context.as_ref().ok_or_else(|| {
            WireError::new(
                ErrorCode::KmsUnavailable,
                "this enclave was started without a network and KMS configuration; it cannot sign",
            )
        })
    }
}

async fn ping(delay_ms: u32) -> Result<Response, WireError> {
    #[cfg(feature = "mock")]
    if delay_ms > 0 {
        let delay = delay_ms.min(MAX_TEST_DELAY_MS);
        tokio::time::sleep(std::time::Duration::from_millis(delay.into())).await;
    }
    #[cfg(not(feature = "mock"))]
    let _ = delay_ms;
    Ok(Response::Pong {
        build: BUILD_FLAVOR,
    })
}
