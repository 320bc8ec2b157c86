#!/usr/bin/env python3
"""Generates stellar/wallet-backend channel-key vectors with independent libraries.

wallet-backend stores each channel account's secret as
base64(nonce(12) || AES-128-GCM(S... seed) || tag(16)), no associated data, under the
key SHA-256(CHANNEL_ACCOUNT_ENCRYPTION_PASSPHRASE)[:16] (its DefaultPrivateKeyEncrypter).
This script encrypts keys that way with Python's `cryptography` (AES-GCM) and
`stellar_sdk` (keys and strkeys), so the enclave's importer is checked against an
implementation it shares no code with. It also writes the cases an import must refuse.

Deterministic: the same seed gives the same file, so CI regenerates it and diffs.
    usage: wallet-backend-vectors.py OUT.json
"""
import base64
import hashlib
import json
import random
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from stellar_sdk import Keypair

PASSPHRASE = "correct horse battery staple, wallet-backend"


def encrypt(passphrase, message, rng):
    key = hashlib.sha256(passphrase.encode()).digest()[:16]
    nonce = bytes(rng.getrandbits(8) for _ in range(12))
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, message.encode(), None)).decode()


def main():
    rng = random.Random(20261202)
    keys = [Keypair.from_raw_ed25519_seed(bytes(rng.getrandbits(8) for _ in range(32)))
            for _ in range(5)]
    channels = [
        {
            "public_key": k.public_key,
            "secret": k.secret,
            "encrypted_private_key": encrypt(PASSPHRASE, k.secret, rng),
        }
        for k in keys
    ]
    other = keys[0]
    tampered = bytearray(base64.b64decode(channels[1]["encrypted_private_key"]))
    tampered[-1] ^= 1
    refused = [
        {
            "why": "another passphrase",
            "public_key": keys[2].public_key,
            "encrypted_private_key": encrypt(PASSPHRASE + "!", keys[2].secret, rng),
            "code": "unusable_key",
        },
        {
            "why": "a flipped tag bit",
            "public_key": keys[1].public_key,
            "encrypted_private_key": base64.b64encode(bytes(tampered)).decode(),
            "code": "unusable_key",
        },
        {
            "why": "another account's seed under this public key",
            "public_key": keys[3].public_key,
            "encrypted_private_key": encrypt(PASSPHRASE, other.secret, rng),
            "code": "public_key_mismatch",
        },
        {
            "why": "too short to hold a nonce and a tag",
            "public_key": keys[4].public_key,
            "encrypted_private_key": base64.b64encode(b"short").decode(),
            "code": "unusable_key",
        },
    ]
    out = {
        "source": "scripts/wallet-backend-vectors.py (Python cryptography AESGCM, stellar_sdk)",
        "passphrase": PASSPHRASE,
        "channels": channels,
        "refused": refused,
    }
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
