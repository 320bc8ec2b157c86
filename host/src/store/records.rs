//! The records every store backend reads and writes.

use common::wire::messages::{KeyFormat as WireKeyFormat, KeyMaterial};
use serde::{Deserialize, Serialize};

use super::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    Distribution,
    Channel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyFormat {
    #[serde(rename = "kms-direct")]
    KmsDirect,
    #[serde(rename = "envelope")]
    Envelope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Pending,
    Active,
    Retired,
}

macro_rules! sql_text_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The stored and displayed name.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
            pub(crate) fn parse(text: &str) -> Option<$ty> {
                match text { $($text => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}
sql_text_enum!(KeyRole { Distribution => "distribution", Channel => "channel" });
sql_text_enum!(KeyFormat { KmsDirect => "kms-direct", Envelope => "envelope" });
sql_text_enum!(KeyState { Pending => "pending", Active => "active", Retired => "retired" });
sql_text_enum!(PendingFor { Verification => "verification", Creation => "creation", Merge => "merge" });

/// A channel account's change on the ledger: the two things a pending channel key may
/// wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerChange {
    /// The account is created (then it joins the pool).
    Creation,
    /// The account is merged into the distribution account (then its key is retired).
    Merge,
}

impl LedgerChange {
    /// What a key waiting for this change is pending for.
    pub fn pending_for(self) -> PendingFor {
        match self {
            LedgerChange::Creation => PendingFor::Creation,
            LedgerChange::Merge => PendingFor::Merge,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.pending_for().as_str()
    }
}

/// What a pending key waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingFor {
    /// An imported key, until the enclave has decrypted it, matched its public key and
    /// made a test signature (then it is active).
    Verification,
    /// Its account is to be created (then it joins the pool).
    Creation,
    /// It left the pool; its account is to be merged into the distribution account
    /// (then the key is retired).
    Merge,
}

/// A key to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub public_key: String,
    pub role: KeyRole,
    pub format: KeyFormat,
    pub kms_key_id: String,
    pub kms_ciphertext: Vec<u8>,
    pub sealed_seed: Option<Vec<u8>>,
    pub state: KeyState,
    /// For a pending key, what it waits for (a pending channel key without one waits
    /// for its account's creation).
    pub pending_for: Option<PendingFor>,
}

impl NewKey {
    /// Refuses a record no backend may store (checked before any write).
    pub fn validate(&self) -> Result<(), StoreError> {
        if stellar_strkey::ed25519::PublicKey::from_string(&self.public_key).is_err() {
            return Err(StoreError::InvalidKey(format!(
                "{:?} is not a Stellar account public key (G...)",
                self.public_key
            )));
        }
        if self.kms_key_id.is_empty() {
            return Err(StoreError::InvalidKey("kms_key_id is empty".into()));
        }
        if self.kms_ciphertext.is_empty() {
            return Err(StoreError::InvalidKey("kms_ciphertext is empty".into()));
        }
        match (self.format, &self.sealed_seed) {
            (KeyFormat::Envelope, None) => Err(StoreError::InvalidKey(
                "the envelope format needs a sealed seed".into(),
            )),
            (KeyFormat::KmsDirect, Some(_)) => Err(StoreError::InvalidKey(
                "the kms-direct format has no sealed seed".into(),
            )),
            _ => Ok(()),
        }
    }

    /// What the stored record waits for: a pending channel key without a reason waits
    /// for its account's creation; a key that is not pending waits for nothing.
    pub fn stored_pending_for(&self) -> Option<PendingFor> {
        match (self.state, self.pending_for, self.role) {
            (KeyState::Pending, Some(reason), _) => Some(reason),
            (KeyState::Pending, None, KeyRole::Channel) => Some(PendingFor::Creation),
            _ => None,
        }
    }
}

/// A stored key. Ciphertexts are included: they are useless outside the enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub public_key: String,
    pub role: KeyRole,
    pub format: KeyFormat,
    pub kms_key_id: String,
    #[serde(skip)]
    pub kms_ciphertext: Vec<u8>,
    #[serde(skip)]
    pub sealed_seed: Option<Vec<u8>>,
    pub state: KeyState,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// A pending key: what it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_for: Option<PendingFor>,
    /// A pending key: why it is still pending (the last refusal, `code: message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// A pending channel key: the transaction (creation or merge) it was last signed
    /// into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<Provisioning>,
}

/// The creation (or merge) transaction of a channel account, recorded before it is
/// handed out for submission: until a ledger closes after `max_time`, it may still be
/// applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provisioning {
    /// Hex hash of the signed transaction.
    pub tx_hash: String,
    /// Its `maxTime` (Unix seconds).
    pub max_time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub caller_uid: Option<u32>,
    pub public_key: Option<String>,
    pub tx_hash: Option<String>,
    /// What happened: `sign`, `fee_bump`, `soroban_auth`, `key_registered`, ...
    pub kind: String,
    /// `ok` or an error code.
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// A signed transaction that consumes a channel account's sequence: the lock follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChannelTx {
    pub account: String,
    /// The transaction hash (the inner hash of a fee-bump), hex.
    pub tx_hash: String,
    /// Its `maxTime`, if it has one.
    pub max_time_unix_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelLease {
    pub account: String,
    /// Proves ownership of this lock to `release`. Treat as a capability.
    pub lock_token: String,
    pub locked_until_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct UnlockOutcome {
    pub unlocked: Vec<UnlockedChannel>,
    /// Hashes that matched no locked channel (already unlocked, or never signed here).
    pub unmatched: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnlockedChannel {
    pub account: String,
    pub tx_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSummary {
    pub total: u64,
    /// Never locked, or released.
    pub idle: u64,
    /// Locked now.
    pub locked: u64,
    /// The lock lapsed without a release; reusable like idle ones.
    pub expired: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<ChannelRow>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRow {
    pub account: String,
    /// `idle`, `locked` or `expired`.
    pub status: &'static str,
    pub locked_at_ms: Option<i64>,
    pub locked_until_ms: Option<i64>,
    pub tx_hash: Option<String>,
}

/// A stored key as the enclave receives it: its public key and ciphertexts.
impl From<KeyRecord> for KeyMaterial {
    fn from(key: KeyRecord) -> KeyMaterial {
        KeyMaterial {
            public_key: key.public_key,
            format: match key.format {
                KeyFormat::KmsDirect => WireKeyFormat::KmsDirect,
                KeyFormat::Envelope => WireKeyFormat::Envelope,
            },
            kms_key_id: key.kms_key_id,
            ciphertext: key.kms_ciphertext,
            sealed_seed: key.sealed_seed,
        }
    }
}
