//! Stable error codes. They are part of the public contract of the host API (the
//! `error.code` field) and of the host↔enclave protocol, so a variant, once published,
//! keeps its name. New variants go at the end: the wire encoding is the variant index.

use serde::{Deserialize, Serialize};

/// A stable error code: the `error.code` of the host API (see [`ErrorCode::as_str`])
/// and the code of every refusal the enclave sends the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (bad JSON, missing field, bad value).
    BadRequest,
    /// No such route or resource.
    NotFound,
    /// The request body exceeds the configured limit.
    PayloadTooLarge,
    /// The host has no working connection to the enclave, or lost it mid-request.
    EnclaveUnavailable,
    /// The enclave did not answer within the request timeout.
    EnclaveTimeout,
    /// Host and enclave speak different protocol versions.
    ProtocolMismatch,
    /// The process is shutting down and takes no new work.
    ShuttingDown,
    /// A bug or an unexpected condition; the message says which.
    Internal,
    /// The HTTP method is not allowed on this route.
    MethodNotAllowed,
    /// The channel pool is empty: provision channel accounts.
    NoChannelAccountsConfigured,
    /// Every channel account is locked: add accounts or lower concurrency.
    NoIdleChannelAccount,
    /// The account named is not in the channel pool.
    UnknownChannelAccount,
    /// The lock token does not hold the lock (it expired and was re-acquired, or was
    /// released already).
    LockTokenMismatch,
    /// A key with this public key is already stored.
    KeyExists,
    /// The host's database failed; the message says how.
    StoreError,
    /// The transaction envelope is not valid XDR, or too large.
    MalformedTransaction,
    /// The request names another network than the enclave is configured for.
    WrongNetwork,
    /// A signer the host does not store.
    UnknownKey,
    /// KMS refused: the key policy does not admit this enclave (PCRs), or no attestation.
    KmsAccessDenied,
    /// KMS refused the ciphertext: tampered, another key, or another encryption context.
    KmsInvalidCiphertext,
    /// KMS did not answer, or throttled us.
    KmsUnavailable,
    /// The decrypted key is not the public key the request named.
    PublicKeyMismatch,
    /// The decrypted secret is not a usable Stellar seed.
    UnusableKey,
    /// The envelope would exceed 20 signatures.
    TooManySignatures,
    /// The enclave has no AWS credentials yet.
    NoCredentials,
    /// The key is not a required signer of this transaction.
    NotARequiredSigner,
    /// A fee-bump was asked for an unsigned transaction.
    NoSignaturesProvided,
    /// The transaction cannot be fee-bumped here (already a fee-bump, or its source is
    /// not an account this signer manages).
    NotEligibleForFeeBump,
    /// The transaction breaks the enclave's signing policy; the message names the rule.
    PolicyViolation,
    /// The enclave is at its limit of requests in flight; retry shortly.
    EnclaveBusy,
    /// The key's record, or KMS's answer, names another KMS key than the one the
    /// enclave's measured settings name.
    KmsKeyMismatch,
    /// KMS kept throttling the enclave's calls after its bounded retries; back off.
    KmsThrottled,
    /// The request's body did not arrive within the host's deadline.
    RequestTimeout,
    /// The host has as many connections open as it allows; retry shortly.
    TooManyConnections,
    /// The caller's user or group is not on the allow-list of this route's group
    /// (`api.callers`).
    CallerNotAllowed,
    /// The host holds as many request bodies as it buffers at once, and none was done
    /// within the body's deadline; retry shortly.
    HostBusy,
}

impl ErrorCode {
    /// Every code, for documentation checks.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::PayloadTooLarge,
        ErrorCode::EnclaveUnavailable,
        ErrorCode::EnclaveTimeout,
        ErrorCode::ProtocolMismatch,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NoChannelAccountsConfigured,
        ErrorCode::NoIdleChannelAccount,
        ErrorCode::UnknownChannelAccount,
        ErrorCode::LockTokenMismatch,
        ErrorCode::KeyExists,
        ErrorCode::StoreError,
        ErrorCode::MalformedTransaction,
        ErrorCode::WrongNetwork,
        ErrorCode::UnknownKey,
        ErrorCode::KmsAccessDenied,
        ErrorCode::KmsInvalidCiphertext,
        ErrorCode::KmsUnavailable,
        ErrorCode::PublicKeyMismatch,
        ErrorCode::UnusableKey,
        ErrorCode::TooManySignatures,
        ErrorCode::NoCredentials,
        ErrorCode::NotARequiredSigner,
        ErrorCode::NoSignaturesProvided,
        ErrorCode::NotEligibleForFeeBump,
        ErrorCode::PolicyViolation,
        ErrorCode::EnclaveBusy,
        ErrorCode::KmsKeyMismatch,
        ErrorCode::KmsThrottled,
        ErrorCode::RequestTimeout,
        ErrorCode::TooManyConnections,
        ErrorCode::CallerNotAllowed,
        ErrorCode::HostBusy,
    ];

    /// The code's snake_case name, as in the host API's `error.code` and in serde.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::EnclaveUnavailable => "enclave_unavailable",
            ErrorCode::EnclaveTimeout => "enclave_timeout",
            ErrorCode::ProtocolMismatch => "protocol_mismatch",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NoChannelAccountsConfigured => "no_channel_accounts_configured",
            ErrorCode::NoIdleChannelAccount => "no_idle_channel_account",
            ErrorCode::UnknownChannelAccount => "unknown_channel_account",
            ErrorCode::LockTokenMismatch => "lock_token_mismatch",
            ErrorCode::KeyExists => "key_exists",
            ErrorCode::StoreError => "store_error",
            ErrorCode::MalformedTransaction => "malformed_transaction",
            ErrorCode::WrongNetwork => "wrong_network",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::KmsAccessDenied => "kms_access_denied",
            ErrorCode::KmsInvalidCiphertext => "kms_invalid_ciphertext",
            ErrorCode::KmsUnavailable => "kms_unavailable",
            ErrorCode::PublicKeyMismatch => "public_key_mismatch",
            ErrorCode::UnusableKey => "unusable_key",
            ErrorCode::TooManySignatures => "too_many_signatures",
            ErrorCode::NoCredentials => "no_credentials",
            ErrorCode::NotARequiredSigner => "not_a_required_signer",
            ErrorCode::NoSignaturesProvided => "no_signatures_provided",
            ErrorCode::NotEligibleForFeeBump => "not_eligible_for_fee_bump",
            ErrorCode::PolicyViolation => "policy_violation",
            ErrorCode::EnclaveBusy => "enclave_busy",
            ErrorCode::KmsKeyMismatch => "kms_key_mismatch",
            ErrorCode::KmsThrottled => "kms_throttled",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::CallerNotAllowed => "caller_not_allowed",
            ErrorCode::HostBusy => "host_busy",
        }
    }

    /// The HTTP status the host API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::MalformedTransaction
            | ErrorCode::WrongNetwork
            | ErrorCode::TooManySignatures
            | ErrorCode::NotARequiredSigner
            | ErrorCode::NoSignaturesProvided
            | ErrorCode::NotEligibleForFeeBump => 400,
            ErrorCode::KmsAccessDenied | ErrorCode::PolicyViolation => 403,
            ErrorCode::CallerNotAllowed => 403,
            ErrorCode::UnknownKey => 404,
            ErrorCode::PublicKeyMismatch
            | ErrorCode::UnusableKey
            | ErrorCode::KmsInvalidCiphertext
            | ErrorCode::KmsKeyMismatch => 422,
            ErrorCode::KmsUnavailable | ErrorCode::NoCredentials => 503,
            ErrorCode::NotFound | ErrorCode::UnknownChannelAccount => 404,
            ErrorCode::LockTokenMismatch | ErrorCode::KeyExists => 409,
            // Retryable: locks expire and get released, KMS quotas refill; back off.
            ErrorCode::NoIdleChannelAccount | ErrorCode::KmsThrottled => 429,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::TooManyConnections | ErrorCode::HostBusy => 503,
            ErrorCode::StoreError => 500,
            // Not retryable until an operator provisions accounts.
            ErrorCode::NoChannelAccountsConfigured => 503,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::ProtocolMismatch => 502,
            ErrorCode::EnclaveUnavailable | ErrorCode::ShuttingDown | ErrorCode::EnclaveBusy => 503,
            ErrorCode::EnclaveTimeout => 504,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it crosses the vsock boundary and the host API: a stable code and a
/// human-readable message. Messages never carry secret material (docs/design.md §2, inv. 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// What went wrong, stable for callers to match on.
    pub code: ErrorCode,
    /// Details for a human; never secret material.
    pub message: String,
}

impl WireError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
