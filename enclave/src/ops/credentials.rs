//! `SetCredentials`: the short-lived AWS credentials the host pushes for the enclave's
//! own KMS calls. They only authenticate to AWS; the key policy still demands an
//! attestation of this enclave, so credentials alone decrypt nothing.

use common::wire::WireError;
use common::wire::messages::{AwsCredentials, Response};

use crate::context::SigningContext;

/// Stores the credentials for the next KMS calls.
pub fn set_credentials(
    context: &SigningContext,
    credentials: AwsCredentials,
) -> Result<Response, WireError> {
    context.kms.set_credentials(credentials);
    Ok(Response::CredentialsStored)
}
