//! What every handler can reach.

use tokio_util::sync::CancellationToken;

use crate::enclave_client::EnclaveClient;
use crate::signing::Signing;
use crate::store::SharedStore;

/// The handlers' shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The enclave connection (readiness and ping; signing goes through `signing`).
    pub enclave: EnclaveClient,
    /// Keys, channel locks and audit.
    pub store: SharedStore,
    /// The signing flow.
    pub signing: Signing,
    /// Cancelled when the host starts shutting down: new requests get `shutting_down`.
    pub shutdown: CancellationToken,
}
