//! JSON shapes and decoders the signing resources share.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::stellar::envelope::hex;
use common::wire::ErrorCode;
use common::wire::messages::SignatureInfo;
use serde::Serialize;

use super::error::ApiError;

/// One signature, as the API shows it.
#[derive(Debug, Serialize)]
pub struct SignatureOut {
    public_key: String,
    /// Hex of the 4-byte signature hint.
    hint: String,
    /// Base64 of the 64-byte ed25519 signature.
    signature: String,
}

impl From<SignatureInfo> for SignatureOut {
    fn from(s: SignatureInfo) -> SignatureOut {
        SignatureOut {
            public_key: s.public_key,
            hint: hex(&s.hint),
            signature: B64.encode(&s.signature),
        }
    }
}

/// Base64 XDR from a request, or `malformed_transaction`.
pub fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    decode_base64_or(ErrorCode::MalformedTransaction, field, text)
}

/// Base64 bytes from a request, or an error with `code`.
pub fn decode_base64_or(code: ErrorCode, field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(text.trim())
        .map_err(|e| ApiError::new(code, format!("{field} is not base64: {e}")))
}

/// Base64 for an answer.
pub fn encode_base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}
