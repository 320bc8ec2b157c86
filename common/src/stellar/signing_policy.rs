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

use stellar_xdr::{
    ContractId, Hash, Operation, OperationBody, ScAddress, TransactionEnvelope, Uint256,
};

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
    /// The (contract, function) calls the distribution account may authorize.
    pub soroban_calls: Vec<AllowedCall>,
}

/// How a [`PolicyViolation`]'s message begins, before its rule name.
const RULE_PREFIX: &str = "signing policy rule ";

/// The rule a `policy_violation` message names (its text is [`PolicyViolation`]'s), for
/// counting refusals by rule; `None` for any other text.
pub fn rule_named_in(message: &str) -> Option<&str> {
    let rule = message.strip_prefix(RULE_PREFIX)?.split(':').next()?;
    let well_formed = !rule.is_empty()
        && rule.len() <= 64
        && rule.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    well_formed.then_some(rule)
}

/// A refusal by the signing policy. Over the wire it becomes `policy_violation`,
/// with this error's text as the message (read back by [`rule_named_in`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signing policy rule {rule}: {detail}")]
pub struct PolicyViolation {
    /// A stable rule name, e.g. `max_time_required`.
    pub rule: &'static str,
    /// What broke the rule, e.g. the operation index, the fee or the `maxTime`.
    pub detail: String,
}

/// Whether `signatures` hold a valid ed25519 signature of `hash` by `key`, matched by
/// hint first (a Stellar decorated signature names its key by the last four bytes).
fn signed_by(
    signatures: &[stellar_xdr::DecoratedSignature],
    key: &[u8; 32],
    hash: &[u8; 32],
) -> bool {
    let Ok(verifying) = ed25519_dalek::VerifyingKey::from_bytes(key) else {
        return false;
    };
    let hint = crate::stellar::envelope::signature_hint(key);
    signatures.iter().any(|decorated| {
        decorated.hint.0 == hint
            && ed25519_dalek::Signature::from_slice(decorated.signature.as_slice())
                .is_ok_and(|signature| verifying.verify_strict(hash, &signature).is_ok())
    })
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
/// Default of [`SigningPolicySettings::fee_budget_stroops`]: 100 XLM per window.
pub const DEFAULT_FEE_BUDGET_STROOPS: i64 = 1_000_000_000;
/// Default of [`SigningPolicySettings::budget_window_secs`]: one hour.
pub const DEFAULT_BUDGET_WINDOW_SECS: u64 = 3600;
/// Default of [`SigningPolicySettings::max_sponsored_accounts`] per window.
pub const DEFAULT_MAX_SPONSORED_ACCOUNTS: u32 = 1000;

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
    /// Enclave only: the total fee (stroops) the distribution account may pay, fee-bumps
    /// and provisioning together, per rolling window (rule `fee_budget`).
    #[cfg_attr(feature = "clap", arg(
        id = "policy_fee_budget_stroops",
        long = "policy-fee-budget-stroops",
        env = "SIGNER_POLICY_FEE_BUDGET_STROOPS",
        default_value_t = DEFAULT_FEE_BUDGET_STROOPS
    ))]
    pub fee_budget_stroops: i64,
    /// Enclave only: the number of accounts the distribution account may sponsor per
    /// rolling window (rule `sponsorship_budget`).
    #[cfg_attr(feature = "clap", arg(
        id = "policy_max_sponsored_accounts",
        long = "policy-max-sponsored-accounts",
        env = "SIGNER_POLICY_MAX_SPONSORED_ACCOUNTS",
        default_value_t = DEFAULT_MAX_SPONSORED_ACCOUNTS
    ))]
    pub max_sponsored_accounts: u32,
    /// Enclave only: the rolling window of both budgets, in seconds.
    #[cfg_attr(feature = "clap", arg(
        id = "policy_budget_window_secs",
        long = "policy-budget-window-secs",
        env = "SIGNER_POLICY_BUDGET_WINDOW_SECS",
        default_value_t = DEFAULT_BUDGET_WINDOW_SECS
    ))]
    pub budget_window_secs: u64,
}

impl Default for SigningPolicySettings {
    fn default() -> Self {
        SigningPolicySettings {
            max_time_window_secs: DEFAULT_MAX_TIME_WINDOW_SECS,
            max_fee: DEFAULT_MAX_FEE,
            max_fee_bump_fee: DEFAULT_MAX_FEE_BUMP_FEE,
            distribution_unrestricted: false,
            soroban_contracts: Vec::new(),
            fee_budget_stroops: DEFAULT_FEE_BUDGET_STROOPS,
            max_sponsored_accounts: DEFAULT_MAX_SPONSORED_ACCOUNTS,
            budget_window_secs: DEFAULT_BUDGET_WINDOW_SECS,
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
            soroban_calls: self
                .soroban_contracts
                .iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| parse_allowed_call(c))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// One entry of the Soroban allow-list: a contract, and the one function of it the
/// distribution account may authorize calls to (`None`: any of its functions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedCall {
    /// The contract's raw id.
    pub contract: [u8; 32],
    /// The function name, a Soroban symbol.
    pub function: Option<String>,
}

impl std::fmt::Display for AllowedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", stellar_strkey::Contract(self.contract))?;
        match &self.function {
            Some(function) => write!(f, ":{function}"),
            None => Ok(()),
        }
    }
}

/// `C...` (any function of the contract) or `C...:function` (that function only).
pub fn parse_allowed_call(text: &str) -> Result<AllowedCall, String> {
    let text = text.trim();
    let (contract, function) = match text.split_once(':') {
        Some((contract, function)) => (contract, Some(function)),
        None => (text, None),
    };
    let contract = stellar_strkey::Contract::from_string(contract)
        .map(|c| c.0)
        .map_err(|_| {
            format!("{text:?} is not a contract address (C...), optionally with :function")
        })?;
    let function = match function {
        None => None,
        Some(name)
            if (1..=32).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Some(name.to_string())
        }
        Some(name) => {
            return Err(format!(
                "{name:?} is not a Soroban function name (1 to 32 of a-z, A-Z, 0-9, _)"
            ));
        }
    };
    Ok(AllowedCall { contract, function })
}

fn violation(rule: &'static str, detail: impl Into<String>) -> PolicyViolation {
    PolicyViolation {
        rule,
        detail: detail.into(),
    }
}

/// What one signing request asks of the enclave: the envelope, every key the request
/// names (distinct), the time and the network the enclave signs for.
#[derive(Debug, Clone, Copy)]
pub struct SignatureRequest<'a> {
    /// The decoded envelope.
    pub envelope: &'a TransactionEnvelope,
    /// Every key the request asks to sign with, raw.
    pub signers: &'a [[u8; 32]],
    /// Now, in Unix seconds.
    pub now_unix: u64,
    /// SHA-256 of the network passphrase the enclave signs for.
    pub network_id: [u8; 32],
}

/// The parts of a (v0 or v1) transaction the rules look at.
struct TxView<'a> {
    source: [u8; 32],
    operations: &'a [Operation],
    fee: i64,
    max_time: Option<u64>,
}

impl<'a> TxView<'a> {
    fn of(envelope: &'a TransactionEnvelope) -> Option<TxView<'a>> {
        match envelope {
            TransactionEnvelope::Tx(e) => Some(Self::v1(&e.tx)),
            TransactionEnvelope::TxV0(e) => Some(TxView {
                source: e.tx.source_account_ed25519.0,
                operations: &e.tx.operations,
                fee: i64::from(e.tx.fee),
                max_time: e
                    .tx
                    .time_bounds
                    .as_ref()
                    .map(|t| t.max_time.0)
                    .filter(|t| *t != 0),
            }),
            TransactionEnvelope::TxFeeBump(_) => None,
        }
    }

    fn v1(tx: &'a stellar_xdr::Transaction) -> TxView<'a> {
        TxView {
            source: muxed(&tx.source_account),
            operations: &tx.operations,
            fee: i64::from(tx.fee),
            max_time: crate::stellar::envelope::max_time(tx),
        }
    }

    /// An operation's source: its own, or (when empty) the transaction's.
    fn source_of(&self, op: &Operation) -> [u8; 32] {
        op.source_account.as_ref().map_or(self.source, muxed)
    }
}

impl SigningPolicy {
    /// Whether `signer` (one of `request.signers`) may sign `request.envelope`.
    pub fn check(
        &self,
        request: &SignatureRequest<'_>,
        signer: &[u8; 32],
    ) -> Result<(), PolicyViolation> {
        let is_distribution = *signer == self.distribution;
        let Some(tx) = TxView::of(request.envelope) else {
            let TransactionEnvelope::TxFeeBump(bump) = request.envelope else {
                unreachable!("TxView::of is None only for fee-bumps")
            };
            if !is_distribution {
                return Err(violation(
                    "fee_bump_fee_source",
                    "only the distribution account pays for fee-bumps",
                ));
            }
            return self.check_fee_bump(bump, request.network_id);
        };
        if is_distribution {
            return self.check_distribution(&tx, request);
        }
        self.check_channel(&tx, signer, request.now_unix)
    }

    /// What the distribution account's signature on `request` costs it: the fee it pays
    /// (a fee-bump's, or a transaction's it sources) and the accounts it sponsors. Zero
    /// when the distribution account is not among the signers.
    pub fn distribution_spend(&self, request: &SignatureRequest<'_>) -> (i64, u32) {
        if !request.signers.contains(&self.distribution) {
            return (0, 0);
        }
        let envelope = request.envelope;
        let Some(tx) = TxView::of(envelope) else {
            let TransactionEnvelope::TxFeeBump(bump) = envelope else {
                unreachable!("TxView::of is None only for fee-bumps")
            };
            return (bump.tx.fee, 0);
        };
        let fee = if tx.source == self.distribution {
            tx.fee
        } else {
            0
        };
        let sponsored = tx
            .operations
            .iter()
            .filter(|op| {
                matches!(op.body, OperationBody::BeginSponsoringFutureReserves(_))
                    && tx.source_of(op) == self.distribution
            })
            .count();
        (fee, u32::try_from(sponsored).unwrap_or(u32::MAX))
    }

    /// A channel's signature: as the transaction source it pays the fee and its
    /// sequence is consumed; as an operation source (explicit, or empty in its own
    /// transaction) its account acts. It acts only to end a sponsorship, to merge into
    /// the distribution account, or to sequence and pay for a Soroban invocation whose
    /// authorizations all use address credentials (so it never authorizes anything).
    fn check_channel(
        &self,
        tx: &TxView<'_>,
        channel: &[u8; 32],
        now_unix: u64,
    ) -> Result<(), PolicyViolation> {
        let own = tx.source == *channel;
        for (index, op) in tx.operations.iter().enumerate() {
            if tx.source_of(op) != *channel || self.channel_may_act(op) {
                continue;
            }
            let (rule, whose) = if own {
                (
                    "channel_not_operation_source",
                    "its own transaction (an empty operation source is the transaction source)",
                )
            } else {
                ("channel_operation_source", "another account's transaction")
            };
            return Err(violation(
                rule,
                format!(
                    "operation {index} ({}) would act as the channel account in {whose}; \
                     channels act only to end a sponsorship, merge into the distribution \
                     account or pay for a Soroban call they do not authorize",
                    op.body.name()
                ),
            ));
        }
        if own {
            self.check_fee_and_time(tx, now_unix, self.max_fee)?;
        }
        Ok(())
    }

    fn channel_may_act(&self, op: &Operation) -> bool {
        match &op.body {
            OperationBody::EndSponsoringFutureReserves
            | OperationBody::ExtendFootprintTtl(_)
            | OperationBody::RestoreFootprint(_) => true,
            OperationBody::AccountMerge(destination) => muxed(destination) == self.distribution,
            OperationBody::InvokeHostFunction(invoke) => invoke.auth.iter().all(|entry| {
                matches!(
                    entry.credentials,
                    stellar_xdr::SorobanCredentials::Address(_)
                )
            }),
            _ => false,
        }
    }

    /// `maxTime` set and within the window, and the fee at most `max_fee`: a paying
    /// account's exposure ends soon and costs little.
    fn check_fee_and_time(
        &self,
        tx: &TxView<'_>,
        now_unix: u64,
        max_fee: i64,
    ) -> Result<(), PolicyViolation> {
        let Some(max_time) = tx.max_time else {
            return Err(violation(
                "max_time_required",
                "transactions this signer pays for must set maxTime, so the exposure (and a \
                 channel's lock) can end",
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
        if tx.fee > max_fee {
            return Err(violation(
                "fee_cap",
                format!("fee {} exceeds the cap of {max_fee}", tx.fee),
            ));
        }
        Ok(())
    }

    /// A fee-bump the distribution account pays: capped, around an inner transaction its
    /// source has signed (verified here: hint and ed25519 signature over the inner
    /// payload), in which the distribution account neither is the source nor acts.
    fn check_fee_bump(
        &self,
        bump: &stellar_xdr::FeeBumpTransactionEnvelope,
        network_id: [u8; 32],
    ) -> Result<(), PolicyViolation> {
        // A fee below 1 is never valid, and a negative one must not be able to offset
        // the distribution account's budget.
        if bump.tx.fee < 1 || bump.tx.fee > self.max_fee_bump_fee {
            return Err(violation(
                "fee_bump_fee_cap",
                format!(
                    "fee {} exceeds the cap of {}",
                    bump.tx.fee, self.max_fee_bump_fee
                ),
            ));
        }
        let stellar_xdr::FeeBumpTransactionInnerTx::Tx(inner) = &bump.tx.inner_tx;
        let tx = TxView::v1(&inner.tx);
        if tx.source == self.distribution
            || tx
                .operations
                .iter()
                .any(|op| tx.source_of(op) == self.distribution)
        {
            return Err(violation(
                "fee_bump_inner_distribution",
                "the distribution account may not be the source of the inner transaction \
                 or of any of its operations",
            ));
        }
        let hash = crate::stellar::envelope::inner_hash(inner, network_id)
            .map_err(|e| violation("fee_bump_inner_unsigned", e.to_string()))?;
        if !signed_by(&inner.signatures, &tx.source, &hash) {
            return Err(violation(
                "fee_bump_inner_unsigned",
                format!(
                    "the inner transaction carries no valid signature by its source {}",
                    stellar_strkey::ed25519::PublicKey(tx.source)
                ),
            ));
        }
        Ok(())
    }

    /// The distribution account signs only provisioning (sponsoring accounts whose keys
    /// sign the same request: the enclave proves it holds them) and retirement merges
    /// from such accounts, with the fee cap and maxTime window, unless unrestricted.
    fn check_distribution(
        &self,
        tx: &TxView<'_>,
        request: &SignatureRequest<'_>,
    ) -> Result<(), PolicyViolation> {
        if self.distribution_unrestricted {
            return Ok(());
        }
        let held =
            |account: &[u8; 32]| *account != self.distribution && request.signers.contains(account);
        for (index, op) in tx.operations.iter().enumerate() {
            let unheld = |account: &[u8; 32]| {
                violation(
                    "sponsorship_unheld_account",
                    format!(
                        "operation {index} ({}) concerns {}, whose key does not sign this \
                         request; the distribution account provisions and retires only \
                         accounts whose keys this signer holds",
                        op.body.name(),
                        stellar_strkey::ed25519::PublicKey(*account)
                    ),
                )
            };
            match &op.body {
                OperationBody::BeginSponsoringFutureReserves(begin) => {
                    let stellar_xdr::PublicKey::PublicKeyTypeEd25519(Uint256(sponsored)) =
                        &begin.sponsored_id.0;
                    if !held(sponsored) {
                        return Err(unheld(sponsored));
                    }
                }
                OperationBody::CreateAccount(create) if create.starting_balance == 0 => {
                    let stellar_xdr::PublicKey::PublicKeyTypeEd25519(Uint256(created)) =
                        &create.destination.0;
                    if !held(created) {
                        return Err(unheld(created));
                    }
                }
                OperationBody::EndSponsoringFutureReserves => {
                    let sponsored = tx.source_of(op);
                    if !held(&sponsored) {
                        return Err(unheld(&sponsored));
                    }
                }
                OperationBody::AccountMerge(destination)
                    if muxed(destination) == self.distribution =>
                {
                    let retired = tx.source_of(op);
                    if !held(&retired) {
                        return Err(unheld(&retired));
                    }
                }
                _ => {
                    return Err(violation(
                        "distribution_provisioning_only",
                        format!(
                            "operation {index} ({}) is not a channel-provisioning step; the \
                             distribution account signs only fee-bumps and provisioning \
                             transactions",
                            op.body.name()
                        ),
                    ));
                }
            }
        }
        self.check_fee_and_time(tx, request.now_unix, self.max_fee)
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
            let call = match &invocation.function {
                stellar_xdr::SorobanAuthorizedFunction::ContractFn(args) => Some(args),
                _ => None,
            };
            let allowed = call.is_some_and(|args| {
                let ScAddress::Contract(ContractId(Hash(id))) = &args.contract_address else {
                    return false;
                };
                let function = args.function_name.0.as_slice();
                self.soroban_calls.iter().any(|allowed| {
                    allowed.contract == *id
                        && allowed
                            .function
                            .as_ref()
                            .is_none_or(|name| name.as_bytes() == function)
                })
            });
            if !allowed {
                let what = match call {
                    Some(args) => format!(
                        "a call to {}:{}",
                        args.contract_address,
                        String::from_utf8_lossy(args.function_name.0.as_slice())
                    ),
                    None => "contract creation".to_string(),
                };
                return Err(violation(
                    "soroban_contract_not_allowed",
                    format!(
                        "invocation {index} is {what}; the distribution account authorizes only \
                         the (contract, function) calls its signing policy lists"
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
            soroban_calls: vec![AllowedCall {
                contract: TOKEN,
                function: None,
            }],
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
    fn soroban_allow_list_names_functions() {
        let only_transfer = SigningPolicy {
            soroban_calls: vec![
                parse_allowed_call(&format!("{}:transfer", stellar_strkey::Contract(TOKEN)))
                    .unwrap(),
            ],
            ..policy()
        };
        let transfer = auth(call(TOKEN, vec![]));
        assert_eq!(only_transfer.check_soroban_auth(&transfer, &DIST), Ok(()));
        let mut approve = call(TOKEN, vec![]);
        if let SorobanAuthorizedFunction::ContractFn(args) = &mut approve.function {
            args.function_name = "approve".try_into().unwrap();
        }
        let approve = auth(approve);
        assert_eq!(
            rule(only_transfer.check_soroban_auth(&approve, &DIST)),
            "soroban_contract_not_allowed"
        );
        // A bare contract admits every function of it.
        assert_eq!(policy().check_soroban_auth(&approve, &DIST), Ok(()));
        for bad in [
            "CNOTACONTRACT",
            &format!("{}:", stellar_strkey::Contract(TOKEN)),
            &format!("{}:a-b", stellar_strkey::Contract(TOKEN)),
        ] {
            assert!(parse_allowed_call(bad).is_err(), "{bad}");
        }
        let shown = format!("{}:transfer", stellar_strkey::Contract(TOKEN));
        assert_eq!(parse_allowed_call(&shown).unwrap().to_string(), shown);
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
        let violation = result.unwrap_err();
        // The message names the rule, so counters read it back from the wire text.
        assert_eq!(
            rule_named_in(&violation.to_string()),
            Some(violation.rule),
            "{violation}"
        );
        violation.rule
    }

    const USER: [u8; 32] = [0x05; 32];
    const NETWORK: &str = "Test SDF Network ; September 2015";

    /// A request naming `signers`, at NOW, on the test network.
    fn req<'a>(envelope: &'a TransactionEnvelope, signers: &'a [[u8; 32]]) -> SignatureRequest<'a> {
        SignatureRequest {
            envelope,
            signers,
            now_unix: NOW,
            network_id: crate::stellar::envelope::network_id(NETWORK),
        }
    }

    /// Checks `envelope` for `signer`, as the only key named.
    fn alone(
        p: &SigningPolicy,
        envelope: &TransactionEnvelope,
        signer: [u8; 32],
    ) -> Result<(), PolicyViolation> {
        p.check(&req(envelope, &[signer]), &signer)
    }

    fn invoke(credentials: SorobanCredentials) -> OperationBody {
        OperationBody::InvokeHostFunction(InvokeHostFunctionOp {
            host_function: HostFunction::InvokeContract(InvokeContractArgs {
                contract_address: ScAddress::Contract(ContractId(Hash(TOKEN))),
                function_name: "transfer".try_into().unwrap(),
                args: VecM::default(),
            }),
            auth: vec![SorobanAuthorizationEntry {
                credentials,
                root_invocation: call(TOKEN, vec![]),
            }]
            .try_into()
            .unwrap(),
        })
    }

    #[test]
    fn channel_transactions_move_other_accounts_funds_only() {
        let p = policy();
        let ok = tx(CHAN, 200, NOW + 60, vec![op(Some(USER), payment_to(DIST))]);
        alone(&p, &ok, CHAN).unwrap();
        // An empty operation source is the channel itself: it would pay its own XLM.
        for body in [
            payment_to(USER),
            OperationBody::AccountMerge(MuxedAccount::Ed25519(Uint256(USER))),
            OperationBody::SetOptions(SetOptionsOp {
                inflation_dest: None,
                clear_flags: None,
                set_flags: None,
                master_weight: Some(0),
                low_threshold: None,
                med_threshold: None,
                high_threshold: None,
                home_domain: None,
                signer: None,
            }),
            OperationBody::ChangeTrust(ChangeTrustOp {
                line: ChangeTrustAsset::Native,
                limit: 1,
            }),
            invoke(SorobanCredentials::SourceAccount),
        ] {
            for source in [None, Some(CHAN)] {
                let own = tx(CHAN, 200, NOW + 60, vec![op(source, body.clone())]);
                assert_eq!(
                    rule(alone(&p, &own, CHAN)),
                    "channel_not_operation_source",
                    "{body:?}"
                );
            }
        }
        // What a channel may do itself: retire into the distribution account, and pay
        // for a Soroban call it does not authorize (with its footprint companions).
        let retire = OperationBody::AccountMerge(MuxedAccount::Ed25519(Uint256(DIST)));
        alone(&p, &tx(CHAN, 200, NOW + 60, vec![op(None, retire)]), CHAN).unwrap();
        let relayed = invoke(SorobanCredentials::Address(SorobanAddressCredentials {
            address: ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(USER)))),
            nonce: 1,
            signature_expiration_ledger: 10,
            signature: ScVal::Void,
        }));
        let extend = OperationBody::ExtendFootprintTtl(ExtendFootprintTtlOp {
            ext: ExtensionPoint::V0,
            extend_to: 100,
        });
        alone(
            &p,
            &tx(
                CHAN,
                200,
                NOW + 60,
                vec![op(None, relayed), op(None, extend)],
            ),
            CHAN,
        )
        .unwrap();

        let unbounded = tx(CHAN, 200, 0, vec![op(Some(USER), payment_to(DIST))]);
        assert_eq!(rule(alone(&p, &unbounded, CHAN)), "max_time_required");
        let far = tx(CHAN, 200, NOW + 301, vec![op(Some(USER), payment_to(DIST))]);
        assert_eq!(rule(alone(&p, &far, CHAN)), "max_time_window");
        let edge = tx(CHAN, 200, NOW + 300, vec![op(Some(USER), payment_to(DIST))]);
        alone(&p, &edge, CHAN).unwrap();
        let dear = tx(
            CHAN,
            10_001,
            NOW + 60,
            vec![op(Some(USER), payment_to(DIST))],
        );
        assert_eq!(rule(alone(&p, &dear, CHAN)), "fee_cap");
    }

    fn provisioning(new: [u8; 32], fee: u32, max_time: u64) -> TransactionEnvelope {
        tx(
            DIST,
            fee,
            max_time,
            vec![
                op(
                    None,
                    OperationBody::BeginSponsoringFutureReserves(BeginSponsoringFutureReservesOp {
                        sponsored_id: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(new))),
                    }),
                ),
                op(
                    None,
                    OperationBody::CreateAccount(CreateAccountOp {
                        destination: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256(new))),
                        starting_balance: 0,
                    }),
                ),
                op(Some(new), OperationBody::EndSponsoringFutureReserves),
            ],
        )
    }

    #[test]
    fn distribution_provisions_and_retires_only_accounts_whose_keys_sign_the_request() {
        let p = policy();
        let both = [DIST, NEW];
        let envelope = provisioning(NEW, 300, NOW + 60);
        p.check(&req(&envelope, &both), &DIST).unwrap();
        // The new channel signs its EndSponsoringFutureReserves.
        p.check(&req(&envelope, &both), &NEW).unwrap();
        // Sponsoring an account whose key does not sign: this signer does not hold it.
        assert_eq!(
            rule(alone(&p, &envelope, DIST)),
            "sponsorship_unheld_account"
        );
        // The distribution pays like a channel: capped fee, maxTime within the window.
        let dear = provisioning(NEW, 10_001, NOW + 60);
        assert_eq!(rule(p.check(&req(&dear, &both), &DIST)), "fee_cap");
        let unbounded = provisioning(NEW, 300, 0);
        assert_eq!(
            rule(p.check(&req(&unbounded, &both), &DIST)),
            "max_time_required"
        );

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
            rule(p.check(&req(&funded, &both), &DIST)),
            "distribution_provisioning_only"
        );
        let pays = tx(DIST, 100, NOW + 60, vec![op(None, payment_to(CHAN))]);
        assert_eq!(
            rule(alone(&p, &pays, DIST)),
            "distribution_provisioning_only"
        );
        let unrestricted = SigningPolicy {
            distribution_unrestricted: true,
            ..policy()
        };
        alone(&unrestricted, &pays, DIST).unwrap();

        // Retirement: a held channel merges into the distribution account.
        let retire = OperationBody::AccountMerge(MuxedAccount::Ed25519(Uint256(DIST)));
        let merge = tx(DIST, 100, NOW + 60, vec![op(Some(NEW), retire.clone())]);
        p.check(&req(&merge, &both), &DIST).unwrap();
        p.check(&req(&merge, &both), &NEW).unwrap();
        assert_eq!(rule(alone(&p, &merge, DIST)), "sponsorship_unheld_account");
        let from_user = tx(DIST, 100, NOW + 60, vec![op(Some(USER), retire)]);
        assert_eq!(
            rule(alone(&p, &from_user, DIST)),
            "sponsorship_unheld_account"
        );
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
            rule(alone(&p, &merge_elsewhere, NEW)),
            "channel_operation_source"
        );
    }

    /// A v1 transaction by `source`, signed by `signer_seed` for `network`.
    fn signed_inner(
        source: [u8; 32],
        ops: Vec<Operation>,
        signer_seed: [u8; 32],
        network: &str,
    ) -> TransactionV1Envelope {
        let TransactionEnvelope::Tx(inner) = tx(source, 100, NOW + 60, ops) else {
            unreachable!()
        };
        sign_inner(inner, signer_seed, network)
    }

    fn sign_inner(
        mut inner: TransactionV1Envelope,
        signer_seed: [u8; 32],
        network: &str,
    ) -> TransactionV1Envelope {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&signer_seed);
        let hash = crate::stellar::envelope::transaction_hash(
            &TransactionEnvelope::Tx(inner.clone()),
            crate::stellar::envelope::network_id(network),
        )
        .unwrap();
        let public = key.verifying_key().to_bytes();
        inner.signatures = vec![DecoratedSignature {
            hint: SignatureHint(crate::stellar::envelope::signature_hint(&public)),
            signature: key.sign(&hash).to_bytes().to_vec().try_into().unwrap(),
        }]
        .try_into()
        .unwrap();
        inner
    }

    fn bump(fee: i64, payer: [u8; 32], inner: TransactionV1Envelope) -> TransactionEnvelope {
        TransactionEnvelope::TxFeeBump(FeeBumpTransactionEnvelope {
            tx: FeeBumpTransaction {
                fee_source: MuxedAccount::Ed25519(Uint256(payer)),
                fee,
                inner_tx: FeeBumpTransactionInnerTx::Tx(inner),
                ext: FeeBumpTransactionExt::V0,
            },
            signatures: VecM::default(),
        })
    }

    #[test]
    fn fee_bumps_only_around_transactions_their_source_signed() {
        let p = policy();
        let user_seed = [0x33; 32];
        let user = ed25519_dalek::SigningKey::from_bytes(&user_seed)
            .verifying_key()
            .to_bytes();
        let payment = || vec![op(None, payment_to(CHAN))];
        let good = signed_inner(user, payment(), user_seed, NETWORK);
        alone(&p, &bump(50_000, DIST, good.clone()), DIST).unwrap();
        assert_eq!(
            rule(alone(&p, &bump(50_001, DIST, good.clone()), DIST)),
            "fee_bump_fee_cap"
        );
        for fee in [i64::MIN, -1, 0] {
            assert_eq!(
                rule(alone(&p, &bump(fee, DIST, good.clone()), DIST)),
                "fee_bump_fee_cap"
            );
        }
        assert_eq!(
            rule(alone(&p, &bump(400, CHAN, good), CHAN)),
            "fee_bump_fee_source"
        );

        let mut unsigned = signed_inner(user, payment(), user_seed, NETWORK);
        unsigned.signatures = VecM::default();
        let by_someone_else = signed_inner(user, payment(), [0x44; 32], NETWORK);
        let other_network = signed_inner(
            user,
            payment(),
            user_seed,
            "Public Global Stellar Network ; September 2015",
        );
        let mut tampered = signed_inner(user, payment(), user_seed, NETWORK);
        tampered.tx.fee += 1;
        for inner in [unsigned, by_someone_else, other_network, tampered] {
            assert_eq!(
                rule(alone(&p, &bump(500, DIST, inner), DIST)),
                "fee_bump_inner_unsigned"
            );
        }
        // A muxed inner source resolves to its G key.
        let mut muxed = signed_inner(user, payment(), user_seed, NETWORK);
        muxed.tx.source_account = MuxedAccount::MuxedEd25519(MuxedAccountMed25519 {
            id: 7,
            ed25519: Uint256(user),
        });
        let muxed = sign_inner(muxed, user_seed, NETWORK);
        alone(&p, &bump(500, DIST, muxed), DIST).unwrap();
        // The distribution account never acts inside a transaction it bumps.
        let dist_seed = [0x55; 32];
        let dist = ed25519_dalek::SigningKey::from_bytes(&dist_seed)
            .verifying_key()
            .to_bytes();
        let p = SigningPolicy {
            distribution: dist,
            ..policy()
        };
        let own = signed_inner(dist, payment(), dist_seed, NETWORK);
        assert_eq!(
            rule(alone(&p, &bump(500, dist, own), dist)),
            "fee_bump_inner_distribution"
        );
        let acts = signed_inner(
            user,
            vec![op(Some(dist), payment_to(CHAN))],
            user_seed,
            NETWORK,
        );
        assert_eq!(
            rule(alone(&p, &bump(500, dist, acts), dist)),
            "fee_bump_inner_distribution"
        );
    }
}
