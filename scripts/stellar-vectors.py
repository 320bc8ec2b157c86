#!/usr/bin/env python3
"""Generates Stellar signing vectors with the independent Python stellar-sdk.

For many pseudo-random transactions (payments, path payments, create-account,
change-trust, several operations with different and muxed sources, every memo type,
time and ledger bounds, v0 envelopes, fee-bumps) it records the unsigned envelope, the
network passphrase, the signer seeds, the transaction hash and the envelope signed by
stellar-sdk. The Rust test `common/tests/stellar_vectors.rs` recomputes hashes and
signatures with this project's code and requires byte-identical results.

Deterministic: the same seed gives the same file, so CI regenerates it and diffs.
    usage: stellar-vectors.py OUT.json [COUNT]
"""
import json
import random
import sys
import warnings

# Unbounded transactions are generated on purpose; the SDK's advice is noise here.
warnings.simplefilter("ignore")

from stellar_sdk import (
    Asset, Keypair, MuxedAccount, Network, TransactionBuilder, TransactionEnvelope,
    FeeBumpTransactionEnvelope, Account, TimeBounds, LedgerBounds, Preconditions,
)
from stellar_sdk.memo import NoneMemo, TextMemo, IdMemo, HashMemo, ReturnHashMemo
from stellar_sdk.xdr import TransactionEnvelope as XdrEnvelope
from stellar_sdk import Address, scval
from stellar_sdk import xdr as X
from stellar_sdk.auth import authorize_entry, authorization_payload_hash, build_authorization_preimage

NETWORKS = [Network.TESTNET_NETWORK_PASSPHRASE, Network.PUBLIC_NETWORK_PASSPHRASE]


def keypair(rng):
    return Keypair.from_raw_ed25519_seed(bytes(rng.getrandbits(8) for _ in range(32)))


def memo(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return NoneMemo()
    if kind == 1:
        return TextMemo("memo %d" % rng.randrange(10**6))
    if kind == 2:
        return IdMemo(rng.randrange(2**63))
    if kind == 3:
        return HashMemo(bytes(rng.getrandbits(8) for _ in range(32)))
    return ReturnHashMemo(bytes(rng.getrandbits(8) for _ in range(32)))


def asset(rng, issuer):
    kind = rng.randrange(3)
    if kind == 0:
        return Asset.native()
    if kind == 1:
        return Asset("USDC", issuer.public_key)
    return Asset("LONGASSET12X", issuer.public_key)


def maybe_muxed(rng, kp):
    if rng.random() < 0.3:
        return MuxedAccount(kp.public_key, rng.randrange(2**64)).account_muxed
    return kp.public_key


def add_operation(rng, builder, source_kp, other, issuer, op_source):
    kind = rng.randrange(5)
    if kind == 0:
        builder.append_payment_op(maybe_muxed(rng, other), asset(rng, issuer),
                                  str(rng.randrange(1, 10**7) / 10**7), source=op_source)
    elif kind == 1:
        builder.append_create_account_op(other.public_key, str(rng.randrange(1, 1000)),
                                         source=op_source)
    elif kind == 2:
        builder.append_change_trust_op(Asset("USDC", issuer.public_key),
                                       limit=str(rng.randrange(1, 10**6)), source=op_source)
    elif kind == 3:
        builder.append_path_payment_strict_send_op(
            maybe_muxed(rng, other), Asset.native(), "10", Asset("USDC", issuer.public_key), "1",
            [Asset("EURT", issuer.public_key)], source=op_source)
    else:
        builder.append_path_payment_strict_receive_op(
            other.public_key, Asset("USDC", issuer.public_key), "5", Asset.native(), "3",
            [], source=op_source)


def vector(rng, index):
    network = rng.choice(NETWORKS)
    source_kp, op_kp, other, issuer, fee_kp = (keypair(rng) for _ in range(5))
    v0 = rng.random() < 0.2
    source_id = source_kp.public_key if v0 else maybe_muxed(rng, source_kp)
    account = Account(source_id, rng.randrange(1, 2**40))
    base_fee = rng.randrange(100, 10_000)
    builder = TransactionBuilder(account, network, base_fee=base_fee, v1=not v0)
    builder.add_memo(memo(rng))
    if rng.random() < 0.7:
        builder.add_time_bounds(rng.randrange(0, 1000), rng.choice([0, 1_700_000_000 + rng.randrange(10**6)]))
    if not v0 and rng.random() < 0.3:
        builder.set_ledger_bounds(rng.randrange(0, 100), rng.randrange(100, 10**6))
    signers = [source_kp]
    for _ in range(rng.randrange(1, 4)):
        with_source = (not v0) and rng.random() < 0.4
        op_source = maybe_muxed(rng, op_kp) if with_source else None
        if with_source and op_kp not in signers:
            signers.append(op_kp)
        add_operation(rng, builder, source_kp, other, issuer, op_source)
    tx = builder.build()
    case = {"name": "tx-%03d%s" % (index, "-v0" if v0 else ""), "network_passphrase": network}
    if not v0 and rng.random() < 0.25:
        tx.sign(source_kp)
        if op_kp in signers:
            tx.sign(op_kp)
        bump = TransactionBuilder.build_fee_bump_transaction(
            maybe_muxed(rng, fee_kp), rng.randrange(base_fee, 2 * base_fee), tx, network)
        case["name"] += "-feebump"
        envelope, signers = bump, [fee_kp]
    else:
        envelope = tx
    case["unsigned"] = envelope.to_xdr()
    case["hash"] = envelope.hash_hex()
    case["seeds"] = [kp.raw_secret_key().hex() for kp in signers]
    for kp in signers:
        envelope.sign(kp)
    case["signed"] = envelope.to_xdr()
    return case


def random_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def contract(rng, pool):
    return Address.from_raw_contract(rng.choice(pool)).to_xdr_sc_address()


def argument(rng, account):
    kind = rng.randrange(8)
    if kind == 0:
        return scval.to_int128(rng.randrange(-(2**127), 2**127))
    if kind == 1:
        return scval.to_address(Address(account.public_key))
    if kind == 2:
        return scval.to_symbol("sym%d" % rng.randrange(1000))
    if kind == 3:
        return scval.to_uint64(rng.randrange(2**64))
    if kind == 4:
        return scval.to_string("text %d" % rng.randrange(10**6))
    if kind == 5:
        return scval.to_bytes(random_bytes(rng, rng.randrange(0, 40)))
    if kind == 6:
        return scval.to_vec([scval.to_uint32(rng.randrange(2**32)), scval.to_bool(rng.random() < 0.5)])
    return scval.to_map({scval.to_symbol("amount"): scval.to_int128(rng.randrange(10**12)),
                         scval.to_symbol("memo"): scval.to_void()})


def invocation(rng, account, pool, depth):
    kind = rng.randrange(10)
    if kind == 0:
        function = X.SorobanAuthorizedFunction(
            type=X.SorobanAuthorizedFunctionType.SOROBAN_AUTHORIZED_FUNCTION_TYPE_CREATE_CONTRACT_HOST_FN,
            create_contract_host_fn=X.CreateContractArgs(
                contract_id_preimage=X.ContractIDPreimage(
                    type=X.ContractIDPreimageType.CONTRACT_ID_PREIMAGE_FROM_ASSET,
                    from_asset=Asset("USDC", account.public_key).to_xdr_object()),
                executable=X.ContractExecutable(
                    type=X.ContractExecutableType.CONTRACT_EXECUTABLE_STELLAR_ASSET)))
    elif kind == 1:
        function = X.SorobanAuthorizedFunction(
            type=X.SorobanAuthorizedFunctionType.SOROBAN_AUTHORIZED_FUNCTION_TYPE_CREATE_CONTRACT_V2_HOST_FN,
            create_contract_v2_host_fn=X.CreateContractArgsV2(
                contract_id_preimage=X.ContractIDPreimage(
                    type=X.ContractIDPreimageType.CONTRACT_ID_PREIMAGE_FROM_ADDRESS,
                    from_address=X.ContractIDPreimageFromAddress(
                        address=Address(account.public_key).to_xdr_sc_address(),
                        salt=X.Uint256(random_bytes(rng, 32)))),
                executable=X.ContractExecutable(
                    type=X.ContractExecutableType.CONTRACT_EXECUTABLE_WASM,
                    wasm_hash=X.Hash(random_bytes(rng, 32))),
                constructor_args=[argument(rng, account) for _ in range(rng.randrange(3))]))
    else:
        function = X.SorobanAuthorizedFunction(
            type=X.SorobanAuthorizedFunctionType.SOROBAN_AUTHORIZED_FUNCTION_TYPE_CONTRACT_FN,
            contract_fn=X.InvokeContractArgs(
                contract_address=contract(rng, pool),
                function_name=X.SCSymbol(rng.choice([b"transfer", b"approve", b"swap", b"deposit"])),
                args=[argument(rng, account) for _ in range(rng.randrange(5))]))
    subs = []
    if depth < 3:
        subs = [invocation(rng, account, pool, depth + 1) for _ in range(rng.choice([0, 0, 1, 2]))]
    return X.SorobanAuthorizedInvocation(function=function, sub_invocations=subs)


def soroban_vector(rng, index, pool):
    network = rng.choice(NETWORKS)
    account = keypair(rng)
    v2 = rng.random() < 0.3
    credentials = X.SorobanAddressCredentials(
        address=Address(account.public_key).to_xdr_sc_address(),
        nonce=X.Int64(rng.randrange(-(2**63), 2**63)),
        signature_expiration_ledger=X.Uint32(rng.choice([0, rng.randrange(2**32)])),
        signature=scval.to_void())
    if v2:
        creds = X.SorobanCredentials(
            type=X.SorobanCredentialsType.SOROBAN_CREDENTIALS_ADDRESS_V2, address_v2=credentials)
    else:
        creds = X.SorobanCredentials(
            type=X.SorobanCredentialsType.SOROBAN_CREDENTIALS_ADDRESS, address=credentials)
    entry = X.SorobanAuthorizationEntry(credentials=creds,
                                        root_invocation=invocation(rng, account, pool, 0))
    expiration = rng.randrange(1, 2**32)
    payload = authorization_payload_hash(build_authorization_preimage(entry, expiration, network))
    signed = authorize_entry(entry, account, expiration, network)
    signature = signed.credentials.address_v2 if v2 else signed.credentials.address
    sig_bytes = signature.signature.vec.sc_vec[0].map.sc_map[1].val.bytes.sc_bytes
    account.verify(payload, sig_bytes)  # raises if the SDK's own signature is bad
    return {
        "name": "auth-%03d%s" % (index, "-v2" if v2 else ""),
        "network_passphrase": network,
        "seed": account.raw_secret_key().hex(),
        "unsigned": entry.to_xdr(),
        "signature_expiration_ledger": expiration,
        "hash": payload.hex(),
        "signed": signed.to_xdr(),
    }


def main():
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    rng = random.Random(20261122)
    cases = [vector(rng, i) for i in range(count)]
    # A separate stream, so adding Soroban cases never changed the transaction cases.
    auth_rng = random.Random(20261123)
    pool = [random_bytes(auth_rng, 32) for _ in range(4)]
    soroban = [soroban_vector(auth_rng, i, pool) for i in range(count // 2)]
    with open(out, "w") as f:
        json.dump({"generator": "stellar-sdk (Python)", "cases": cases,
                   "soroban_auth": soroban}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
