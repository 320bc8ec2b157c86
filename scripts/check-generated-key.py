#!/usr/bin/env python3
"""Checks, with the independent Python stellar-sdk, that a key generated inside the
enclave signs, and still signs after the host and the enclave restart.

It starts the local stack (`signer-dev up`, whose keys are all generated in the mock
enclave), builds a channel-sourced transaction with stellar-sdk, has the signer sign it
over the host API, and verifies the returned envelope's signature with stellar-sdk's own
hashing and ed25519. Then it stops the stack, starts it again on the same state, and
does it once more.

    usage: check-generated-key.py PATH/TO/signer-dev
"""
import sys
import tempfile
import warnings

warnings.simplefilter("ignore")

from signer_api import call, start, stop
from stellar_sdk import (
    Account, Asset, Keypair, Network, TransactionBuilder, TransactionEnvelope,
)

NETWORK = Network.TESTNET_NETWORK_PASSPHRASE


def sign_and_verify(sock, channel, distribution):
    user = Keypair.random()
    tx = (
        TransactionBuilder(Account(channel, 4294967296), NETWORK, base_fee=100)
        .set_timeout(120)
        .append_payment_op(distribution, Asset.native(), "1", source=user.public_key)
        .build()
    )
    status, answer = call(sock, "POST", "/v1/sign", {
        "transaction": tx.to_xdr(), "signers": [channel],
    })
    assert status == 200, (status, answer)
    signed = TransactionEnvelope.from_xdr(answer["transaction"], NETWORK)
    assert signed.hash_hex() == tx.hash_hex() == answer["hash"]
    keypair = Keypair.from_public_key(channel)
    [signature] = signed.signatures
    assert signature.signature_hint == keypair.signature_hint()
    keypair.verify(signed.hash(), signature.signature)  # raises if it does not verify


def main():
    signer_dev = sys.argv[1]
    with tempfile.TemporaryDirectory() as state:
        sock = f"{state}/host.sock"
        stack = start(signer_dev, state)
        try:
            _, keys = call(sock, "GET", "/v1/keys")
            channels = [k for k in keys["keys"] if k["role"] == "channel"]
            [distribution] = [k for k in keys["keys"] if k["role"] == "distribution"]
            assert channels and all(k["format"] == "envelope" for k in keys["keys"]), keys
            channel = channels[0]["public_key"]
            sign_and_verify(sock, channel, distribution["public_key"])
        finally:
            stop(stack)
        stack = start(signer_dev, state)
        try:
            sign_and_verify(sock, channel, distribution["public_key"])
        finally:
            stop(stack)
    print("a key generated in the enclave signs, verified by the Python stellar-sdk, "
          "before and after a restart")


if __name__ == "__main__":
    main()
