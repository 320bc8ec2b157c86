//! The signing flow, with no HTTP types: look the keys up, pre-check the signing
//! policy, ask the enclave, audit every outcome, keep channel locks in step. The API's
//! sign, fee-bump and Soroban routes (and any future client) call this module; each
//! flow lives in its own file and shares the steps below.
//!
//! Nothing here is a security boundary: the enclave re-checks everything (docs/design.md
//! §2 invariant 8). The host's checks exist so honest callers get an answer without a
//! round trip, and so every refusal is audited.

mod envelope;
mod fee_bump;
mod provision;
mod soroban;
mod verify_key;

pub use envelope::SignedEnvelope;
pub use fee_bump::{FeeBumped, FeeChoice};
pub use provision::{
    MAX_ACCOUNTS_PER_TRANSACTION, MAX_PROVISIONING_WINDOW_SECS, ProvisionRequest, Provisioned,
    creation_transaction,
};
pub use soroban::SorobanAuthorized;

use common::stellar::envelope::{SequenceOwner, hex};
use common::stellar::signing_policy::{SigningPolicy, SigningPolicySettings};
use common::wire::messages::{KeyMaterial, Request, Response};
use common::wire::{ErrorCode, WireError};

use crate::enclave_client::EnclaveClient;
use crate::store::{
    AuditEntry, KeyRecord, KeyState, SharedStore, SignedChannelTx, StoreError, active_distribution,
    blocking, committed, the_active,
};

/// What was asked for, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignKind {
    /// `POST /v1/sign`.
    Sign,
    /// `POST /v1/fee-bump`.
    FeeBump,
    /// `POST /v1/soroban/authorize`.
    SorobanAuth,
    /// `POST /v1/channels/provision`.
    Provisioning,
}

impl SignKind {
    /// The audit log's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignKind::Sign => "sign",
            SignKind::FeeBump => "fee_bump",
            SignKind::SorobanAuth => "soroban_auth",
            SignKind::Provisioning => "channel_provisioning",
        }
    }
}

/// The signing service: the enclave connection, the store and the host's copy of the
/// signing-policy settings.
#[derive(Clone)]
pub struct Signing {
    enclave: EnclaveClient,
    store: SharedStore,
    /// `stellar.network_passphrase`, for requests that name no network.
    network_passphrase: Option<String>,
    /// The host's copy of the enclave's signing policy, parsed once; the distribution
    /// account is filled in per request from the store.
    policy: SigningPolicy,
    precheck: bool,
}

/// The stored records of the keys a request names, and the distribution key when the
/// flow needs it, fetched in one store trip.
struct Lookup {
    keys: Vec<(String, Option<KeyRecord>)>,
    distribution: Option<KeyRecord>,
}

impl Signing {
    /// A signing service; `precheck` turns the host's signing-policy pre-check on.
    /// Fails only on settings that do not parse (a Soroban allow-list entry).
    pub fn new(
        enclave: EnclaveClient,
        store: SharedStore,
        network_passphrase: Option<String>,
        settings: &SigningPolicySettings,
        precheck: bool,
    ) -> Result<Signing, String> {
        Ok(Signing {
            enclave,
            store,
            network_passphrase,
            policy: settings.signing_policy([0; 32])?,
            precheck,
        })
    }

    /// The network a request is for: its own, or the configured one.
    pub fn network(&self, requested: Option<String>) -> Result<String, WireError> {
        requested
            .or_else(|| self.network_passphrase.clone())
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::BadRequest,
                    "no network_passphrase in the request and none configured in [stellar]",
                )
            })
    }

    /// The enclave's signing policy as the host believes it is configured, for the
    /// stored distribution account.
    fn signing_policy(&self, distribution: [u8; 32]) -> SigningPolicy {
        SigningPolicy {
            distribution,
            ..self.policy.clone()
        }
    }

    async fn lookup(
        &self,
        public_keys: Vec<String>,
        with_distribution: bool,
    ) -> Result<Lookup, WireError> {
        if let Some(found) = self.lookup_in_memory(&public_keys, with_distribution) {
            return Ok(found);
        }
        let store = self.store.clone();
        blocking(move || {
            let keys = public_keys
                .into_iter()
                .map(|pk| store.key(&pk).map(|k| (pk, k)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let distribution = if with_distribution {
                active_distribution(store.as_ref())?
            } else {
                None
            };
            Ok(Lookup { keys, distribution })
        })
        .await
    }

    /// The lookup from the store's memory alone, when every record is there.
    fn lookup_in_memory(&self, public_keys: &[String], with_distribution: bool) -> Option<Lookup> {
        let keys = public_keys
            .iter()
            .map(|pk| Some((pk.clone(), Some(self.store.key_in_memory(pk)?))))
            .collect::<Option<Vec<_>>>()?;
        let distribution = if with_distribution {
            the_active(self.store.distribution_in_memory()?)
        } else {
            None
        };
        Some(Lookup { keys, distribution })
    }

    async fn ask_enclave(&self, request: Request) -> Result<Response, WireError> {
        self.enclave.call(request).await.map_err(|e| e.to_wire())
    }

    /// Audits one outcome (one row per key; `roles` are the keys' roles, in order, for
    /// the metrics) and, after a signature, keeps the channel whose sequence the
    /// transaction consumes locked until it can no longer land.
    async fn record(
        &self,
        caller_uid: Option<u32>,
        kind: SignKind,
        (public_keys, roles): (&[String], &[&'static str]),
        outcome: Result<[u8; 32], &WireError>,
        channel: Option<SequenceOwner>,
    ) -> Result<(), WireError> {
        count(kind, roles, outcome.err());
        let rows: Vec<AuditEntry> = public_keys
            .iter()
            .map(|public_key| AuditEntry {
                caller_uid,
                public_key: Some(public_key.clone()),
                tx_hash: outcome.as_ref().ok().map(|hash| hex(hash)),
                kind: kind.as_str().into(),
                outcome: match &outcome {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.code.to_string(),
                },
                detail: outcome.as_ref().err().map(|e| e.message.clone()),
            })
            .collect();
        // The lock follows a signed channel transaction, committed with its audit rows.
        let signed = outcome
            .is_ok()
            .then_some(channel)
            .flatten()
            .map(|owner| SignedChannelTx {
                account: format!("{}", stellar_strkey::ed25519::PublicKey(owner.account)),
                tx_hash: hex(&owner.hash),
                max_time_unix_s: owner.max_time,
            });
        // Queued for the group commit and awaited here, holding no thread.
        committed(self.store.submit_outcome(&rows, signed.as_ref())).await
    }
}

/// The role of each looked-up key, in order, as the metrics name it (`unknown` for a key
/// this host does not store): read from the records the lookup already fetched.
fn roles_of(keys: &[(String, Option<KeyRecord>)]) -> Vec<&'static str> {
    keys.iter()
        .map(|(_, key)| key.as_ref().map_or("unknown", |key| key.role.as_str()))
        .collect()
}

/// Counts each signer's outcome (`roles`, one per signer), and a policy refusal by its
/// rule, for `/metrics`.
fn count(kind: SignKind, roles: &[&'static str], error: Option<&WireError>) {
    let metrics = crate::metrics::global();
    for role in roles {
        metrics.signature(role, kind.as_str(), error.map(|e| e.code));
    }
    if let Some(e) = error
        && e.code == ErrorCode::PolicyViolation
    {
        metrics.policy_refusal(
            common::stellar::signing_policy::rule_named_in(&e.message).unwrap_or("unnamed"),
        );
    }
}

/// What the enclave needs to open the stored keys, each of which must be active.
fn active_material(keys: Vec<(String, Option<KeyRecord>)>) -> Result<Vec<KeyMaterial>, WireError> {
    keys.into_iter()
        .map(|(public_key, key)| {
            key.filter(|k| k.state == KeyState::Active)
                .map(KeyMaterial::from)
                .ok_or_else(|| {
                    WireError::new(
                        ErrorCode::UnknownKey,
                        format!("{public_key} is not an active key of this signer"),
                    )
                })
        })
        .collect()
}

fn unexpected(answer: &Response) -> WireError {
    WireError::new(
        ErrorCode::Internal,
        format!("unexpected enclave answer {answer:?}"),
    )
}
