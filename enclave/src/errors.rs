//! How the enclave's internal errors become the stable codes the host receives. No
//! message here carries key material: the errors they come from never hold any.

use common::wire::{ErrorCode, WireError};

use crate::attestor::AttestorError;
use crate::keys::KeyError;
use crate::kms::KmsError;
use crate::kms::recipient::RecipientError;

impl KmsError {
    /// The stable code a KMS failure reaches the host as.
    pub fn code(&self) -> ErrorCode {
        match self {
            KmsError::AccessDenied(_) => ErrorCode::KmsAccessDenied,
            KmsError::InvalidCiphertext(_) | KmsError::NotFound(_) => {
                ErrorCode::KmsInvalidCiphertext
            }
            KmsError::NoCredentials(_) | KmsError::CredentialsRejected { .. } => {
                ErrorCode::NoCredentials
            }
            KmsError::Settings(_) => ErrorCode::Internal,
            KmsError::KeyMismatch { .. } => ErrorCode::KmsKeyMismatch,
            KmsError::Throttled(_) => ErrorCode::KmsThrottled,
            KmsError::Unavailable(_)
            | KmsError::Other { .. }
            | KmsError::MissingCiphertextForRecipient
            | KmsError::MissingCiphertextBlob => ErrorCode::KmsUnavailable,
        }
    }
}

impl From<KmsError> for WireError {
    fn from(e: KmsError) -> WireError {
        WireError::new(e.code(), e.to_string())
    }
}

impl From<KeyError> for WireError {
    fn from(e: KeyError) -> WireError {
        let code = match &e {
            KeyError::PublicKeyMismatch { .. } => ErrorCode::PublicKeyMismatch,
            KeyError::BadPublicKey(_) => ErrorCode::BadRequest,
            KeyError::WeakRandom { .. } => ErrorCode::Internal,
            KeyError::UnrecognisedSecret { .. }
            | KeyError::DataKeyLength { .. }
            | KeyError::SealBroken
            | KeyError::WalletBackendSealBroken { .. } => ErrorCode::UnusableKey,
        };
        WireError::new(code, e.to_string())
    }
}

impl From<RecipientError> for WireError {
    fn from(e: RecipientError) -> WireError {
        WireError::new(
            ErrorCode::KmsUnavailable,
            format!("cannot open KMS's answer: {e}"),
        )
    }
}

impl From<AttestorError> for WireError {
    fn from(e: AttestorError) -> WireError {
        WireError::new(
            ErrorCode::KmsUnavailable,
            format!("no usable attestation: {e}"),
        )
    }
}
