//! What every handler can reach.

use std::ops::Deref;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::health::LastReadiness;
use crate::enclave_client::EnclaveClient;
use crate::readiness::{Canary, CredentialsStatus};
use crate::signing::Signing;
use crate::store::SharedStore;

/// The handlers' shared state. axum clones it for every extractor and middleware of
/// every request, so a clone is one reference count: cloning the parts (the signing
/// policy among them) was about 5% of the host's CPU under ping load.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What every handler can reach.
pub struct Shared {
    /// The enclave connection (readiness and ping; signing goes through `signing`).
    pub enclave: EnclaveClient,
    /// Keys, channel locks and audit.
    pub store: SharedStore,
    /// The signing flow.
    pub signing: Signing,
    /// Cancelled when the host starts shutting down: new requests get `shutting_down`.
    pub shutdown: CancellationToken,
    /// The credentials pusher's status; `None` when this host pushes none (no `[kms]`).
    pub credentials: Option<Arc<CredentialsStatus>>,
    /// The readiness canary, when `readiness.canary_period_secs` is set.
    pub canary: Option<Arc<Canary>>,
    /// `/readyz`'s last answer, reused for a second.
    pub readiness: LastReadiness,
}
