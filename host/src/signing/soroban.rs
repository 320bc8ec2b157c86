//! Soroban authorization entries: `POST /v1/soroban/authorize`. Only the distribution
//! account authorizes; channel accounts never do.

use common::stellar::signing_policy::PolicyViolation;
use common::stellar::soroban::{authorizing_account, decode_auth_entry};
use common::wire::messages::{Request, Response, SignatureInfo};
use common::wire::{ErrorCode, WireError};

use super::{SignKind, Signing, active_material, roles_of, unexpected};
use crate::store::KeyRole;

/// A signed authorization entry as the enclave returned it.
#[derive(Debug, Clone)]
pub struct SorobanAuthorized {
    /// Raw XDR of the entry with its expiration ledger and signature filled in.
    pub entry: Vec<u8>,
    /// The authorization payload hash the signature signs.
    pub hash: [u8; 32],
    /// The signature.
    pub signature: SignatureInfo,
}

impl Signing {
    /// Has the enclave sign `entry_xdr` for the account it names, valid through
    /// `expiration_ledger`. `expected_signer`, when given, must be that account.
    pub async fn authorize_soroban(
        &self,
        caller_uid: Option<u32>,
        network: String,
        entry_xdr: Vec<u8>,
        expiration_ledger: u32,
        expected_signer: Option<String>,
    ) -> Result<SorobanAuthorized, WireError> {
        let entry = decode_auth_entry(&entry_xdr)?;
        let account_raw = authorizing_account(&entry)?;
        let account = format!("{}", stellar_strkey::ed25519::PublicKey(account_raw));
        if let Some(signer) = expected_signer
            && signer != account
        {
            return Err(WireError::new(
                ErrorCode::NotARequiredSigner,
                format!("the entry authorizes for {account}, not {signer}"),
            ));
        }
        if expiration_ledger == 0 {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "signature_expiration_ledger must be above 0",
            ));
        }
        let lookup = self.lookup(vec![account.clone()], false).await?;
        let roles = roles_of(&lookup.keys);
        let role = lookup
            .keys
            .first()
            .and_then(|(_, key)| key.as_ref())
            .map(|key| key.role);
        // Every outcome from here on is audited, refusals by the host's own checks too.
        let outcome = async {
            let signer = active_material(lookup.keys)?
                .pop()
                .ok_or_else(|| WireError::new(ErrorCode::Internal, "no key looked up"))?;
            if self.precheck {
                // The host knows roles; the enclave knows only the distribution account
                // and treats every other key as a channel. Same rule, same answer.
                if role == Some(KeyRole::Channel) {
                    return Err(PolicyViolation {
                        rule: "channel_soroban_auth",
                        detail: "channel accounts never authorize Soroban invocations".into(),
                    }
                    .into());
                }
                self.signing_policy(account_raw)
                    .check_soroban_auth(&entry, &account_raw)?;
            }
            let request = Request::AuthorizeSoroban {
                network_passphrase: network,
                entry: entry_xdr,
                signature_expiration_ledger: expiration_ledger,
                signer,
            };
            match self.ask_enclave(request).await? {
                Response::SorobanAuthorized {
                    entry,
                    hash,
                    signature,
                } => Ok(SorobanAuthorized {
                    entry,
                    hash,
                    signature,
                }),
                other => Err(unexpected(&other)),
            }
        }
        .await;
        self.record(
            caller_uid,
            SignKind::SorobanAuth,
            (&[account], &roles),
            outcome.as_ref().map(|authorized| authorized.hash),
            None,
        )
        .await?;
        outcome
    }
}
