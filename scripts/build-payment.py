#!/usr/bin/env python3
"""Builds an unsigned channel-sourced payment with the Python stellar-sdk and prints its
base64 XDR: the channel account is the transaction source (it sequences the
transaction and pays the fee, and the signer signs for it), the user account is the
payment's source (its funds; its owner signs separately).

    usage: build-payment.py CHANNEL DESTINATION AMOUNT [--user G...] [--sequence N]
                            [--base-fee STROOPS] [--network-passphrase TEXT]

Needs `pip install stellar-sdk==16.1.1`. The sequence defaults to 1 (the local stack's
accounts are not on any ledger); on a real network read the channel's sequence first.
"""
import argparse
import warnings

warnings.simplefilter("ignore")

from stellar_sdk import Account, Asset, Keypair, Network, TransactionBuilder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel")
    parser.add_argument("destination")
    parser.add_argument("amount", help="in XLM, e.g. 12.5")
    parser.add_argument("--user", help="the payment's source (default: a random account)")
    parser.add_argument("--sequence", type=int, default=1, help="the channel's current sequence")
    parser.add_argument("--base-fee", type=int, default=100)
    parser.add_argument("--network-passphrase", default=Network.TESTNET_NETWORK_PASSPHRASE)
    args = parser.parse_args()
    user = args.user or Keypair.random().public_key
    envelope = (
        TransactionBuilder(Account(args.channel, args.sequence), args.network_passphrase,
                           base_fee=args.base_fee)
        .set_timeout(120)
        .append_payment_op(args.destination, Asset.native(), args.amount, source=user)
        .build()
    )
    print(envelope.to_xdr())


if __name__ == "__main__":
    main()
