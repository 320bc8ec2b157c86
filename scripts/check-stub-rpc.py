#!/usr/bin/env python3
"""Checks `signer-dev stub-rpc` with a third-party Stellar RPC client.

The Rust client in host/src/stellar_rpc.rs is tested against the stub; this script
makes sure the stub answers in the shapes Stellar RPC publishes, by reading it with
the Python stellar-sdk's SorobanServer (its pydantic models reject a missing or
mistyped field). It also has the stub apply a sponsored account creation that the
SDK built and signed, so the stub's ledger rules are checked by an independent
implementation of the transaction format and signatures.

    usage: check-stub-rpc.py PATH/TO/signer-dev
"""
import subprocess
import sys
import time
import warnings

warnings.simplefilter("ignore")

from stellar_sdk import Keypair, Network, SorobanServer, TransactionBuilder
from stellar_sdk.exceptions import AccountNotFoundException
from stellar_sdk.soroban_rpc import GetTransactionStatus, SendTransactionStatus
from stellar_sdk.xdr import TransactionResult, TransactionResultCode

NETWORK = Network.TESTNET_NETWORK_PASSPHRASE


def creation(server, sponsor, new, sequence_offset=0, sign_new=True):
    account = server.load_account(sponsor.public_key)
    account.sequence += sequence_offset
    tx = (
        TransactionBuilder(account, NETWORK, base_fee=100)
        .set_timeout(60)
        .append_begin_sponsoring_future_reserves_op(new.public_key)
        .append_create_account_op(new.public_key, "0")
        .append_end_sponsoring_future_reserves_op(source=new.public_key)
        .build()
    )
    tx.sign(sponsor)
    if sign_new:
        tx.sign(new)
    return tx


def refusal_code(answer):
    assert answer.status == SendTransactionStatus.ERROR, answer
    return TransactionResult.from_xdr(answer.error_result_xdr).result.code


def wait_for(server, tx_hash):
    for _ in range(100):
        answer = server.get_transaction(tx_hash)
        if answer.status != GetTransactionStatus.NOT_FOUND:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"{tx_hash} never left NOT_FOUND")


def main():
    sponsor = Keypair.random()
    stub = subprocess.Popen(
        [sys.argv[1], "stub-rpc", "--ledger-ms", "100",
         "--fund", f"{sponsor.public_key}=1000000000"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        url = stub.stdout.readline().split()[-1]
        server = SorobanServer(url)

        assert server.get_health().status == "healthy"
        assert server.get_network().passphrase == NETWORK

        new = Keypair.random()
        try:
            server.load_account(new.public_key)
            raise AssertionError("an account that does not exist was found")
        except AccountNotFoundException:
            pass

        unknown = server.get_transaction("00" * 32)
        assert unknown.status == GetTransactionStatus.NOT_FOUND
        assert unknown.latest_ledger_close_time > 0

        bad_seq = server.send_transaction(creation(server, sponsor, new, sequence_offset=5))
        assert refusal_code(bad_seq) == TransactionResultCode.txBAD_SEQ, bad_seq

        unsigned = server.send_transaction(creation(server, sponsor, new, sign_new=False))
        assert refusal_code(unsigned) == TransactionResultCode.txBAD_AUTH, unsigned

        tx = creation(server, sponsor, new)
        sent = server.send_transaction(tx)
        assert sent.status == SendTransactionStatus.PENDING, sent
        assert sent.hash == tx.hash_hex()
        applied = wait_for(server, sent.hash)
        assert applied.status == GetTransactionStatus.SUCCESS, applied
        assert applied.ledger is not None and applied.envelope_xdr
        result = TransactionResult.from_xdr(applied.result_xdr)
        assert result.result.code == TransactionResultCode.txSUCCESS
        assert result.fee_charged.int64 == 300

        created = server.load_account(new.public_key)
        assert created.sequence == applied.ledger << 32, created.sequence
        assert server.load_account(sponsor.public_key).sequence == tx.transaction.sequence

        again = server.send_transaction(creation(server, sponsor, new))
        assert again.status == SendTransactionStatus.PENDING
        failed = wait_for(server, again.hash)
        assert failed.status == GetTransactionStatus.FAILED, failed
        assert (
            TransactionResult.from_xdr(failed.result_xdr).result.code
            == TransactionResultCode.txFAILED
        )
        print("stub-rpc: the Python stellar-sdk read every answer; ledger rules held")
    finally:
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()
