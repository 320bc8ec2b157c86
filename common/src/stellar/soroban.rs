//! Soroban authorization entries: decoding untrusted XDR with bounds, the payload an
//! account's `__check_auth` verifies, and the signature shape of the built-in Stellar
//! account contract.
//!
//! Supported credentials: `SOROBAN_CREDENTIALS_ADDRESS` (payload preimage
//! `ENVELOPE_TYPE_SOROBAN_AUTHORIZATION`) and `SOROBAN_CREDENTIALS_ADDRESS_V2` (CAP-71,
//! `ENVELOPE_TYPE_SOROBAN_AUTHORIZATION_WITH_ADDRESS`, which also binds the address).
//! Source-account credentials need no signature of their own (the transaction's covers
//! them); entries with delegates are refused, since re-signing the top level with a new
//! expiration would silently break the delegates' signatures.

use sha2::{Digest, Sha256};
use stellar_xdr::{
    AccountId, Hash, HashIdPreimage, HashIdPreimageSorobanAuthorization,
    HashIdPreimageSorobanAuthorizationWithAddress, Limits, PublicKey, ScAddress, ScBytes, ScMap,
    ScMapEntry, ScSymbol, ScVal, ScVec, SorobanAddressCredentials, SorobanAuthorizationEntry,
    SorobanAuthorizedFunction, SorobanAuthorizedInvocation, SorobanCredentials, Uint256, WriteXdr,
};

use crate::stellar::envelope::{StellarError, decode_bounded};

/// Why an authorization entry could not be decoded, hashed or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SorobanError {
    /// The XDR is longer than the envelope limit
    /// ([`crate::stellar::envelope::MAX_ENVELOPE_LEN`]): `actual` bytes, `max` allowed.
    #[error("authorization entry of {actual} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Bytes given.
        actual: usize,
        /// Most bytes accepted.
        max: usize,
    },
    /// The XDR does not decode or encode within the bounds, or the signature value
    /// could not be built; the text says which.
    #[error("malformed SorobanAuthorizationEntry XDR: {0}")]
    Malformed(String),
    /// The entry's credentials are not address credentials (e.g. source-account ones,
    /// which carry no signature of their own); `actual` is their XDR name.
    #[error(
        "the entry has {actual} credentials; only address credentials (ADDRESS or ADDRESS_V2) \
         carry a signature"
    )]
    UnsupportedCredentials {
        /// The credentials kind the entry has.
        actual: &'static str,
    },
    /// The address credentials name something other than a G... account (e.g. a
    /// contract); `actual` is that address.
    #[error("the entry authorizes for {actual}; only a G... account address can be signed here")]
    NotAnAccountAddress {
        /// The address the entry names.
        actual: String,
    },
    /// A `signature_expiration_ledger` of 0 was asked for.
    #[error("signature_expiration_ledger must be above 0")]
    ZeroExpiration,
}

#[cfg(feature = "wire")]
impl From<SorobanError> for crate::wire::WireError {
    fn from(e: SorobanError) -> crate::wire::WireError {
        let code = match &e {
            SorobanError::TooLarge { .. } | SorobanError::Malformed(_) => {
                crate::wire::ErrorCode::MalformedTransaction
            }
            SorobanError::UnsupportedCredentials { .. } | SorobanError::ZeroExpiration => {
                crate::wire::ErrorCode::BadRequest
            }
            SorobanError::NotAnAccountAddress { .. } => crate::wire::ErrorCode::NotARequiredSigner,
        };
        crate::wire::WireError::new(code, e.to_string())
    }
}

/// Decodes an untrusted SorobanAuthorizationEntry within the envelope size and depth
/// bounds.
pub fn decode_auth_entry(xdr: &[u8]) -> Result<SorobanAuthorizationEntry, SorobanError> {
    decode_bounded(xdr).map_err(|e| match e {
        StellarError::TooLarge { actual, max } => SorobanError::TooLarge { actual, max },
        other => SorobanError::Malformed(other.to_string()),
    })
}

/// Encodes an entry to XDR.
pub fn encode_auth_entry(entry: &SorobanAuthorizationEntry) -> Result<Vec<u8>, SorobanError> {
    entry
        .to_xdr(Limits::none())
        .map_err(|e| SorobanError::Malformed(e.to_string()))
}

fn address_credentials(
    entry: &SorobanAuthorizationEntry,
) -> Result<&SorobanAddressCredentials, SorobanError> {
    match &entry.credentials {
        SorobanCredentials::Address(c) | SorobanCredentials::AddressV2(c) => Ok(c),
        other => Err(SorobanError::UnsupportedCredentials {
            actual: other.name(),
        }),
    }
}

/// The account (raw ed25519 key) an entry with address credentials authorizes for.
pub fn authorizing_account(entry: &SorobanAuthorizationEntry) -> Result<[u8; 32], SorobanError> {
    match &address_credentials(entry)?.address {
        ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(key)))) => Ok(*key),
        other => Err(SorobanError::NotAnAccountAddress {
            actual: other.to_string(),
        }),
    }
}

/// The 32 bytes the account signs: SHA-256 of the authorization preimage for this
/// network, with `signature_expiration_ledger` (the entry's own value is replaced).
pub fn auth_payload_hash(
    entry: &SorobanAuthorizationEntry,
    signature_expiration_ledger: u32,
    network_id: [u8; 32],
) -> Result<[u8; 32], SorobanError> {
    if signature_expiration_ledger == 0 {
        return Err(SorobanError::ZeroExpiration);
    }
    let credentials = address_credentials(entry)?;
    let preimage = match &entry.credentials {
        SorobanCredentials::AddressV2(_) => HashIdPreimage::SorobanAuthorizationWithAddress(
            HashIdPreimageSorobanAuthorizationWithAddress {
                network_id: Hash(network_id),
                nonce: credentials.nonce,
                signature_expiration_ledger,
                address: credentials.address.clone(),
                invocation: entry.root_invocation.clone(),
            },
        ),
        _ => HashIdPreimage::SorobanAuthorization(HashIdPreimageSorobanAuthorization {
            network_id: Hash(network_id),
            nonce: credentials.nonce,
            signature_expiration_ledger,
            invocation: entry.root_invocation.clone(),
        }),
    };
    let bytes = preimage
        .to_xdr(Limits::none())
        .map_err(|e| SorobanError::Malformed(e.to_string()))?;
    Ok(Sha256::digest(&bytes).into())
}

/// Writes the expiration ledger and the signature, shaped as the Stellar account
/// contract expects (`Vec[Map{public_key: Bytes, signature: Bytes}]`), into the
/// entry. Any earlier signature is replaced: it signed a different payload unless the
/// expiration was the same, and one key signs once.
pub fn set_auth_signature(
    entry: &mut SorobanAuthorizationEntry,
    signature_expiration_ledger: u32,
    public_key: &[u8; 32],
    signature: &[u8; 64],
) -> Result<(), SorobanError> {
    let malformed = |what: &str| SorobanError::Malformed(what.to_string());
    let symbol = |name: &str| -> Result<ScVal, SorobanError> {
        Ok(ScVal::Symbol(ScSymbol(
            name.try_into().map_err(|_| malformed("symbol"))?,
        )))
    };
    let bytes = |raw: &[u8]| -> Result<ScVal, SorobanError> {
        Ok(ScVal::Bytes(ScBytes(
            raw.to_vec().try_into().map_err(|_| malformed("bytes"))?,
        )))
    };
    let map = ScMap(
        vec![
            ScMapEntry {
                key: symbol("public_key")?,
                val: bytes(public_key)?,
            },
            ScMapEntry {
                key: symbol("signature")?,
                val: bytes(signature)?,
            },
        ]
        .try_into()
        .map_err(|_| malformed("map"))?,
    );
    let value = ScVal::Vec(Some(ScVec(
        vec![ScVal::Map(Some(map))]
            .try_into()
            .map_err(|_| malformed("vec"))?,
    )));
    match &mut entry.credentials {
        SorobanCredentials::Address(c) | SorobanCredentials::AddressV2(c) => {
            c.signature_expiration_ledger = signature_expiration_ledger;
            c.signature = value;
            Ok(())
        }
        other => Err(SorobanError::UnsupportedCredentials {
            actual: other.name(),
        }),
    }
}

/// Every invocation the entry authorizes, root first, depth-first.
pub fn invocations(entry: &SorobanAuthorizationEntry) -> Vec<&SorobanAuthorizedInvocation> {
    let mut out = Vec::new();
    let mut stack = vec![&entry.root_invocation];
    while let Some(invocation) = stack.pop() {
        out.push(invocation);
        stack.extend(invocation.sub_invocations.iter().rev());
    }
    out
}

/// The contract an invocation calls, or `None` for contract creation.
pub fn invoked_contract(invocation: &SorobanAuthorizedInvocation) -> Option<&ScAddress> {
    match &invocation.function {
        SorobanAuthorizedFunction::ContractFn(args) => Some(&args.contract_address),
        SorobanAuthorizedFunction::CreateContractHostFn(_)
        | SorobanAuthorizedFunction::CreateContractV2HostFn(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellar_xdr::{ContractId, InvokeContractArgs, VecM};

    fn entry(credentials: SorobanCredentials) -> SorobanAuthorizationEntry {
        SorobanAuthorizationEntry {
            credentials,
            root_invocation: SorobanAuthorizedInvocation {
                function: SorobanAuthorizedFunction::ContractFn(InvokeContractArgs {
                    contract_address: ScAddress::Contract(ContractId(Hash([7; 32]))),
                    function_name: "transfer".try_into().unwrap(),
                    args: VecM::default(),
                }),
                sub_invocations: VecM::default(),
            },
        }
    }

    fn address(key: [u8; 32]) -> SorobanAddressCredentials {
        SorobanAddressCredentials {
            address: ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(key)))),
            nonce: 42,
            signature_expiration_ledger: 0,
            signature: ScVal::Void,
        }
    }

    #[test]
    fn v1_and_v2_payloads_differ_and_depend_on_expiration_and_network() {
        let v1 = entry(SorobanCredentials::Address(address([1; 32])));
        let v2 = entry(SorobanCredentials::AddressV2(address([1; 32])));
        let a = auth_payload_hash(&v1, 100, [0; 32]).unwrap();
        assert_ne!(a, auth_payload_hash(&v2, 100, [0; 32]).unwrap());
        assert_ne!(a, auth_payload_hash(&v1, 101, [0; 32]).unwrap());
        assert_ne!(a, auth_payload_hash(&v1, 100, [1; 32]).unwrap());
        assert_eq!(authorizing_account(&v1).unwrap(), [1; 32]);
    }

    #[test]
    fn source_account_credentials_and_contract_addresses_are_refused() {
        let source = entry(SorobanCredentials::SourceAccount);
        assert!(matches!(
            auth_payload_hash(&source, 1, [0; 32]),
            Err(SorobanError::UnsupportedCredentials { .. })
        ));
        let mut credentials = address([1; 32]);
        credentials.address = ScAddress::Contract(ContractId(Hash([9; 32])));
        let contract = entry(SorobanCredentials::Address(credentials));
        assert!(matches!(
            authorizing_account(&contract),
            Err(SorobanError::NotAnAccountAddress { .. })
        ));
        let v1 = entry(SorobanCredentials::Address(address([1; 32])));
        assert_eq!(
            auth_payload_hash(&v1, 0, [0; 32]),
            Err(SorobanError::ZeroExpiration)
        );
    }

    #[test]
    fn signing_sets_expiration_and_replaces_the_signature() {
        let mut e = entry(SorobanCredentials::Address(address([1; 32])));
        set_auth_signature(&mut e, 500, &[1; 32], &[2; 64]).unwrap();
        set_auth_signature(&mut e, 600, &[1; 32], &[3; 64]).unwrap();
        let SorobanCredentials::Address(c) = &e.credentials else {
            panic!()
        };
        assert_eq!(c.signature_expiration_ledger, 600);
        let ScVal::Vec(Some(ScVec(items))) = &c.signature else {
            panic!("{:?}", c.signature)
        };
        assert_eq!(items.len(), 1);
        let bytes = encode_auth_entry(&e).unwrap();
        assert_eq!(decode_auth_entry(&bytes).unwrap(), e);
    }

    #[test]
    fn invocations_are_walked_depth_first() {
        let mut e = entry(SorobanCredentials::Address(address([1; 32])));
        let leaf = |n: u8| SorobanAuthorizedInvocation {
            function: SorobanAuthorizedFunction::ContractFn(InvokeContractArgs {
                contract_address: ScAddress::Contract(ContractId(Hash([n; 32]))),
                function_name: "f".try_into().unwrap(),
                args: VecM::default(),
            }),
            sub_invocations: VecM::default(),
        };
        let mut middle = leaf(2);
        middle.sub_invocations = vec![leaf(3)].try_into().unwrap();
        e.root_invocation.sub_invocations = vec![middle, leaf(4)].try_into().unwrap();
        let order: Vec<u8> = invocations(&e)
            .iter()
            .map(|i| match invoked_contract(i) {
                Some(ScAddress::Contract(ContractId(Hash(h)))) => h[0],
                _ => 0,
            })
            .collect();
        assert_eq!(order, vec![7, 2, 3, 4]);
    }

    #[test]
    fn oversized_and_garbage_entries_are_refused() {
        assert!(matches!(
            decode_auth_entry(&vec![0; crate::stellar::envelope::MAX_ENVELOPE_LEN + 1]),
            Err(SorobanError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_auth_entry(b"garbage"),
            Err(SorobanError::Malformed(_))
        ));
    }
}
