//! The signing policy the enclave enforces from its own (measured) configuration, on top
//! of "only as a required signer" (docs/design.md §2 inv. 3):
//!
//! - a channel account signs a transaction it sources only if no operation names it as
//!   source, `maxTime` is set and at most `max_time_window_secs` ahead, and the fee is
//!   at most `max_fee`; as an operation source it signs only provisioning steps
//!   (`EndSponsoringFutureReserves`) and its own retirement (`AccountMerge` into the
//!   distribution account); it never pays for fee-bumps;
//! - the distribution account signs fee-bumps (fee at most `max_fee_bump_fee`) and
//!   channel-provisioning transactions (sponsorship, `CreateAccount` with balance 0,
//!   `AccountMerge` into itself) only, unless `distribution_unrestricted`;
//! - Soroban authorization entries are signed for the distribution account only, and
//!   only when every invocation they authorize calls a contract in `soroban_contracts`
//!   (no contract creation), unless `distribution_unrestricted`. Channel accounts never
//!   authorize Soroban invocations: they exist to source transactions, not to hold value.

use stellar_xdr::{ContractId, Hash, Operation, OperationBody, ScAddress, TransactionEnvelope};

use crate::stellar::envelope::account_key as muxed;

/// The signing policy in force (see the module documentation for its rules), built
/// from [`SigningPolicySettings`]. Account keys are raw 32-byte ed25519 keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningPolicy {
    /// The distribution account; every other key this enclave signs for is a channel.
    pub distribution: [u8; 32],
    /// How far ahead of now, in seconds, a channel transaction's `maxTime` may be.
    pub max_time_window_secs: u64,
    /// Largest total fee (stroops) of a channel-sourced transaction.
    pub max_fee: i64,
    /// Largest fee (stroops) of a fee-bump the distribution account pays.
    pub max_fee_bump_fee: i64,
    /// Lets the distribution account sign anything it is a required signer of, and
    /// authorize any Soroban invocation.
    pub distribution_unrestricted: bool,
    /// Contracts (raw 32-byte ids) the distribution account may authorize calls to.
    pub soroban_contracts: Vec<[u8; 32]>,
}

/// A refusal by the signing policy. Over the wire it becomes `policy_violation`,
/// with this error's text as the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing policy rule {rule}: {detail}")]
pub struct PolicyViolation {
    /// A stable rule name, e.g. `max_time_required`.
    pub rule: &'static str,
    /// What broke the rule, e.g. the operation index, the fee or the `maxTime`.
    pub detail: String,
}

#[cfg(feature = "wire")]
impl From<PolicyViolation> for crate::wire::WireError {
    fn from(v: PolicyViolation) -> crate::wire::WireError {
        crate::wire::WireError::new(crate::wire::ErrorCode::PolicyViolation, v.to_string())
    }
}

/// Default of [`SigningPolicySettings::max_time_window_secs`].
pub const DEFAULT_MAX_TIME_WINDOW_SECS: u64 = 300;
/// Default of [`SigningPolicySettings::max_fee`]: 1 XLM.
pub const DEFAULT_MAX_FEE: i64 = 10_000_000;
/// Default of [`SigningPolicySettings::max_fee_bump_fee`]: 1 XLM.
pub const DEFAULT_MAX_FEE_BUMP_FEE: i64 = 10_000_000;

/// The signing policy's settings, defined once: the enclave reads them from its
/// measured flags (`--policy-*`, `SIGNER_POLICY_*`), the host from its
/// `[signing_policy]` section to pre-check with the same values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct SigningPolicySettings {
    /// How far ahead a channel transaction's maxTime may be, in seconds.
    #[cfg_attr(feature = "clap", arg(
        id = "policy_max_time_window_secs",
        long = "policy-max-time-window-secs",
        env = "SIGNER_POLICY_MAX_TIME_WINDOW_SECS",
        default_value_t = DEFAULT_MAX_TIME_WINDOW_SECS
    ))]
    pub max_time_window_secs: u64,
    /// The largest total fee (stroops) of a channel-sourced transaction.
    #[cfg_attr(feature = "clap", arg(
        id = "policy_max_fee",
        long = "policy-max-fee",
        env = "SIGNER_POLICY_MAX_FEE",
        default_value_t = DEFAULT_MAX_FEE
    ))]
    pub max_fee: i64,
    /// The largest fee-bump fee (stroops) the distribution account pays.
    #[cfg_attr(feature = "clap", arg(
        id = "policy_max_fee_bump_fee",
        long = "policy-max-fee-bump-fee",
        env = "SIGNER_POLICY_MAX_FEE_BUMP_FEE",
        default_value_t = DEFAULT_MAX_FEE_BUMP_FEE
    ))]
    pub max_fee_bump_fee: i64,
    /// Let the distribution key sign anything it is a required signer of, not only
    /// fee-bumps and channel provisioning.
    #[cfg_attr(
        feature = "clap",
        arg(
            id = "policy_distribution_unrestricted",
            long = "policy-distribution-unrestricted",
            env = "SIGNER_POLICY_DISTRIBUTION_UNRESTRICTED"
        )
    )]
    pub distribution_unrestricted: bool,
    /// Contracts (`C...`) the distribution account may authorize Soroban calls to;
    /// repeat the flag or separate with commas. With none, it authorizes no Soroban
    /// call (unless distribution_unrestricted).
    #[cfg_attr(
        feature = "clap",
        arg(
            id = "policy_soroban_contract",
            long = "policy-soroban-contract",
            env = "SIGNER_POLICY_SOROBAN_CONTRACTS",
            value_delimiter = ','
        )
    )]
    #[serde(default)]
    pub soroban_contracts: Vec<String>,
}

impl Default for SigningPolicySettings {
    fn default() -> Self {
        SigningPolicySettings {
            max_time_window_secs: DEFAULT_MAX_TIME_WINDOW_SECS,
            max_fee: DEFAULT_MAX_FEE,
            max_fee_bump_fee: DEFAULT_MAX_FEE_BUMP_FEE,
            distribution_unrestricted: false,
            soroban_contracts: Vec::new(),
        }
    }
}

impl SigningPolicySettings {
    /// The policy these settings describe for the given distribution account. An empty
    /// contract entry (an unset image build argument) lists nothing.
    pub fn signing_policy(&self, distribution: [u8; 32]) -> Result<SigningPolicy, String> {
        Ok(SigningPolicy {
            distribution,
            max_time_window_secs: self.max_time_window_secs,
            max_fee: self.max_fee,
            max_fee_bump_fee: self.max_fee_bump_fee,
            distribution_unrestricted: self.distribution_unrestricted,
            soroban_contracts: self
                .soroban_contracts
                .iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| parse_contract_id(c))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A contract address (`C...`) as the raw id the policy lists.
pub fn parse_contract_id(text: &str) -> Result<[u8; 32], String> {
    stellar_strkey::Contract::from_string(text.trim())
        .map(|c| c.0)
        .map_err(|_| format!("{text:?} is not a contract address (C...)"))
}

fn violation(rule: &'static str, detail: impl Into<String>) -> PolicyViolation {
    PolicyViolation {
        rule,
        detail: detail.into(),
    }
}

impl SigningPolicy {
    /// Whether `signer` may sign `envelope` at `now_unix`.
    pub fn check(
        &self,
        envelope: &TransactionEnvelope,
        signer: &[u8; 32],
        now_unix: u64,
    ) -> Result<(), PolicyViolation> {
        let is_distribution = *signer == self.distribution;
        let (source, operations, fee, max_time): (_, &[Operation], i64, Option<u64>) =
            match envelope {
                TransactionEnvelope::TxFeeBump(e) => {
                    if !is_distribution {
                        return Err(violation(
                            "fee_bump_fee_source",
                            "only the distribution account pays for fee-bumps",
                        ));
                    }
                    if e.tx.fee > self.max_fee_bump_fee {
                        return Err(violation(
                            "fee_bump_fee_cap",
                            format!(
                                "fee {} exceeds the cap of {}",
                                e.tx.fee, self.max_fee_bump_fee
                            ),
                        ));
                    }
                    return Ok(());
                }
                TransactionEnvelope::Tx(e) => (
                    muxed(&e.tx.source_account),
                    &e.tx.operations,
                    i64::from(e.tx.fee),
                    crate::stellar::envelope::max_time(&e.tx),
                ),
                TransactionEnvelope::TxV0(e) => (
                    e.tx.source_account_ed25519.0,
                    &e.tx.operations,
                    i64::from(e.tx.fee),
                    e.tx.time_bounds
                        .as_ref()
                        .map(|t| t.max_time.0)
                        .filter(|t| *t != 0),
                ),
            };
        if is_distribution {
            return self.check_distribution(operations);
        }
        if source != *signer {
            return self.check_channel_as_operation_source(operations, signer);
        }
        if operations
            .iter()
            .any(|op| op.source_account.as_ref().map(muxed) == Some(*signer))
        {
            return Err(violation(
                "channel_not_operation_source",
                "a channel account may not be the source of an operation in its own transaction",
            ));
        }
        let Some(max_time) = max_time else {
            return Err(violation(
                "max_time_required",
                "channel transactions must set maxTime, so the channel's lock can end",
            ));
        };
        if max_time > now_unix.saturating_add(self.max_time_window_secs) {
            return Err(violation(
                "max_time_window",
                format!(
                    "maxTime {max_time} is more than {} s ahead of now ({now_unix})",
                    self.max_time_window_secs
                ),
            ));
        }
        if fee > self.max_fee {
            return Err(violation(
                "fee_cap",
                format!("fee {fee} exceeds the cap of {}", self.max_fee),
            ));
        }
        Ok(())
    }

    /// Whether `signer` may sign a Soroban authorization entry.
    pub fn check_soroban_auth(
        &self,
        entry: &stellar_xdr::SorobanAuthorizationEntry,
        signer: &[u8; 32],
    ) -> Result<(), PolicyViolation> {
        if *signer != self.distribution {
            return Err(violation(
                "channel_soroban_auth",
                "channel accounts never authorize Soroban invocations",
            ));
        }
        if self.distribution_unrestricted {
            return Ok(());
        }
        for (index, invocation) in crate::stellar::soroban::invocations(entry)
            .into_iter()
            .enumerate()
        {
            let allowed = match crate::stellar::soroban::invoked_contract(invocation) {
                Some(ScAddress::Contract(ContractId(Hash(id)))) => {
                    self.soroban_contracts.contains(id)
                }
                _ => false,
            };
            if !allowed {
                let what = match crate::stellar::soroban::invoked_contract(invocation) {
                    Some(address) => format!("a call to {address}"),
                    None => "contract creation".to_string(),
                };
                return Err(violation(
                    "soroban_contract_not_allowed",
                    format!(
                        "invocation {index} is {what}; the distribution account authorizes calls \
                         only to the contracts its policy lists"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_distribution(&self, operations: &[Operation]) -> Result<(), PolicyViolation> {
        if self.distribution_unrestricted {
            return Ok(());
        }
        for (index, op) in operations.iter().enumerate() {
            let allowed = match &op.body {
                OperationBody::BeginSponsoringFutureReserves(_)
                | OperationBody::EndSponsoringFutureReserves => true,
                OperationBody::CreateAccount(create) => create.starting_balance == 0,
                OperationBody::AccountMerge(destination) => muxed(destination) == self.distribution,
                _ => false,
            };
            if !allowed {
                return Err(violation(
                    "distribution_provisioning_only",
                    format!(
                        "operation {index} ({}) is not a channel-provisioning step; the distribution \
                         account signs only fee-bumps and provisioning transactions",
                        op.body.name()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_channel_as_operation_source(
        &self,
        operations: &[Operation],
        signer: &[u8; 32],
    ) -> Result<(), PolicyViolation> {
        for (index, op) in operations.iter().enumerate() {
            if op.source_account.as_ref().map(muxed) != Some(*signer) {
                continue;
            }
            let allowed = match &op.body {
                OperationBody::EndSponsoringFutureReserves => true,
                OperationBody::AccountMerge(destination) => muxed(destination) == self.distribution,
                _ => false,
            };
            if !allowed {
                return Err(violation(
                    "channel_operation_source",
                    format!(
                        "operation {index} ({}) has a channel account as source; channels sign \
                         other transactions only to end sponsorship or merge into the distribution account",
                        op.body.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellar_xdr::*;

    const DIST: [u8; 32] = [0xd0; 32];
    const CHAN: [u8; 32] = [0xc1; 32];
    const NEW: [u8; 32] = [0xc2; 32];
    const NOW: u64 = 1_700_000_000;

    fn policy() -> SigningPolicy {
        SigningPolicy {
            distribution: DIST,
            max_time_window_secs: 300,
            max_fee: 10_000,
            max_fee_bump_fee: 50_000,
            distribution_unrestricted: false,
            soroban_contracts: vec![TOKEN],
        }
    }

    const TOKEN: [u8; 32] = [0x70; 32];

    fn call(
        contract: [u8; 32],
        subs: Vec<SorobanAuthorizedInvocation>,
    ) -> SorobanAuthorizedInvocation {
        SorobanAuthorizedInvocation {
            function: SorobanAuthorizedFunction::ContractFn(InvokeContractArgs {
                contract_address: ScAddress::Contract(ContractId(Hash(contract))),
                function_name: "transfer".try_into().unwrap(),
                args: VecM::default(),
            }),
            sub_invocations: subs.try_into().unwrap(),
        }
    }

    fn auth(root: SorobanAuthorizedInvocation) -> SorobanAuthorizationEntry {
        SorobanAuthorizationEntry {
            credentials: SorobanCredentials::Address(SorobanAddressCredentials {
                address: ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(
                    DIST,
                )))),
                nonce: 1,
                signature_expiration_ledger: 0,
                signature: ScVal::Void,
            }),
            root_invocation: root,
        }
    }

    #[test]
    fn soroban_auth_only_for_the_distribution_and_listed_contracts() {
        let p = policy();
        let ok = auth(call(TOKEN, vec![call(TOKEN, vec![])]));
        assert_eq!(p.check_soroban_auth(&ok, &DIST), Ok(()));
        assert_eq!(
            rule(p.check_soroban_auth(&ok, &CHAN)),
            "channel_soroban_auth"
        );
        let other_root = auth(call([0x71; 32], vec![]));
        assert_eq!(
            rule(p.check_soroban_auth(&other_root, &DIST)),
            "soroban_contract_not_allowed"
        );
        let other_nested = auth(call(TOKEN, vec![call([0x71; 32], vec![])]));
        assert_eq!(
            rule(p.check_soroban_auth(&other_nested, &DIST)),
            "soroban_contract_not_allowed"
        );
        let mut create = call(TOKEN, vec![]);
        create.function = SorobanAuthorizedFunction::CreateContractHostFn(CreateContractArgs {
            contract_id_preimage: ContractIdPreimage::Asset(Asset::Native),
            executable: ContractExecutable::StellarAsset,
        });
        let create = auth(create);
        assert_eq!(
            rule(p.check_soroban_auth(&create, &DIST)),
            "soroban_contract_not_allowed"
        );
        let unrestricted = SigningPolicy {
            distribution_unrestricted: true,
            ..policy()
        };
        assert_eq!(
            unrestricted.check_soroban_auth(&other_nested, &DIST),
            Ok(())
        );
        assert_eq!(unrestricted.check_soroban_auth(&create, &DIST), Ok(()));
        assert_eq!(
            rule(unrestricted.check_soroban_auth(&ok, &CHAN)),
            "channel_soroban_auth"
        );
    }

    fn op(source: Option<[u8; 32]>, body: OperationBody) -> Operation {
        Operation {
            source_account: source.map(|k| MuxedAccount::Ed25519(Uint256(k))),
            body,
        }
    }

    fn payment_to(destination: [u8; 32]) -> OperationBody {
        OperationBody::Payment(PaymentOp {
            destination: MuxedAccount::Ed25519(Uint256(destination)),
            asset: Asset::Native,
            amount: 1,
        })
    }

    fn tx(source: [u8; 32], fee: u32, max_time: u64, ops: Vec<Operation>) -> TransactionEnvelope {
        TransactionEnvelope::Tx(TransactionV1Envelope {
            tx: Transaction {
                source_account: MuxedAccount::Ed25519(Uint256(source)),
                fee,
                seq_num: SequenceNumber(1),
                cond: Preconditions::Time(TimeBounds {
                    min_time: TimePoint(0),
                    max_time: TimePoint(max_time),
                }),
                memo: Memo::None,
                operations: ops.try_into().unwrap(),
                ext: TransactionExt::V0,
            },
            signatures: VecM::default(),
        })
    }

    fn rule(result: Result<(), PolicyViolation>) -> &'static str {
        result.unwrap_err().rule
    }

    #[test]
    fn channel_transactions() {
        let p = policy();
        let ok = tx(CHAN, 200, NOW + 60, vec![op(None, payment_to(DIST))]);
        p.check(&ok, &CHAN, NOW).unwrap();
        let own_op = tx(CHAN, 200, NOW + 60, vec![op(Some(CHAN), payment_to(DIST))]);
        assert_eq!(
            rule(p.check(&own_op, &CHAN, NOW)),
            "channel_not_operation_source"
        );
        let unbounded = tx(CHAN, 200, 0, vec![op(None, payment_to(DIST))]);
        assert_eq!(rule(p.check(&unbounded, &CHAN, NOW)), "max_time_required");
        let far = tx(CHAN, 200, NOW + 301, vec![op(None, payment_to(DIST))]);
        assert_eq!(rule(p.check(&far, &CHAN, NOW)), "max_time_window");
        let edge = tx(CHAN, 200, NOW + 300, vec![op(None, payment_to(DIST))]);
        p.check(&edge, &CHAN, NOW).unwrap();
        let dear = tx(CHAN, 10_001, NOW + 60, vec![op(None, payment_to(DIST))]);
        assert_eq!(rule(p.check(&dear, &CHAN, NOW)), "fee_cap");
    }

    #[test]
    fn distribution_signs_provisioning_and_fee_bumps_only() {
        let p = policy();
        let provisioning = tx(
            DIST,
            300,
            NOW + 60,
            vec![
                op(
                    None,
                    OperationBody::BeginSponsoringFutureReserves(BeginSponsoringFutureReservesOp {
                        sponsored_id: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(NEW))),
                    }),
                ),
                op(
                    None,
                    OperationBody::CreateAccount(CreateAccountOp {
                        destination: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(NEW))),
                        starting_balance: 0,
                    }),
                ),
                op(Some(NEW), OperationBody::EndSponsoringFutureReserves),
            ],
        );
        p.check(&provisioning, &DIST, NOW).unwrap();
        // The new channel signs its EndSponsoringFutureReserves.
        p.check(&provisioning, &NEW, NOW).unwrap();
        let funded = tx(
            DIST,
            100,
            NOW + 60,
            vec![op(
                None,
                OperationBody::CreateAccount(CreateAccountOp {
                    destination: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(NEW))),
                    starting_balance: 1,
                }),
            )],
        );
        assert_eq!(
            rule(p.check(&funded, &DIST, NOW)),
            "distribution_provisioning_only"
        );
        let pays = tx(DIST, 100, NOW + 60, vec![op(None, payment_to(CHAN))]);
        assert_eq!(
            rule(p.check(&pays, &DIST, NOW)),
            "distribution_provisioning_only"
        );
        let unrestricted = SigningPolicy {
            distribution_unrestricted: true,
            ..policy()
        };
        unrestricted.check(&pays, &DIST, NOW).unwrap();

        let merge = tx(
            CHAN,
            100,
            NOW + 60,
            vec![op(
                Some(NEW),
                OperationBody::AccountMerge(MuxedAccount::Ed25519(Uint256(DIST))),
            )],
        );
        p.check(&merge, &NEW, NOW).unwrap();
        let merge_elsewhere = tx(
            CHAN,
            100,
            NOW + 60,
            vec![op(
                Some(NEW),
                OperationBody::AccountMerge(MuxedAccount::Ed25519(Uint256(CHAN))),
            )],
        );
        assert_eq!(
            rule(p.check(&merge_elsewhere, &NEW, NOW)),
            "channel_operation_source"
        );

        let TransactionEnvelope::Tx(inner) =
            tx(CHAN, 100, NOW + 60, vec![op(None, payment_to(DIST))])
        else {
            unreachable!()
        };
        let bump = |fee: i64, payer: [u8; 32]| {
            TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
                tx: FeeBumpTransaction {
                    fee_source: MuxedAccount::Ed25519(Uint256(payer)),
                    fee,
                    inner_tx: FeeBumpTransactionInnerTx::Tx(inner.clone()),
                    ext: FeeBumpTransactionExt::V0,
                },
                signatures: VecM::default(),
            })
        };
        p.check(&bump(50_000, DIST), &DIST, NOW).unwrap();
        assert_eq!(
            rule(p.check(&bump(50_001, DIST), &DIST, NOW)),
            "fee_bump_fee_cap"
        );
        assert_eq!(
            rule(p.check(&bump(400, CHAN), &CHAN, NOW)),
            "fee_bump_fee_source"
        );
    }
}
