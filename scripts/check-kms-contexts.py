#!/usr/bin/env python3
"""Runs the operator's `aws kms encrypt` steps from the README against a third-party KMS
emulator (moto, which enforces encryption contexts as KMS does) and checks that what
they make opens only under the encryption context the enclave sends.

The contexts are read from where they are defined: the operator's commands from
README.md, the enclave's from the code (common/src/wire/messages.rs for the
wallet-backend passphrase; enclave/src/keys.rs for `kms-direct` and `envelope` keys).
So a README that tells operators to encrypt under another context than the enclave
asks KMS for fails here, not on a production import.

    usage: check-kms-contexts.py REPO
"""
import os
import re
import shlex
import sys

import boto3
from botocore.exceptions import ClientError
from moto import mock_aws

G = "GDAGGTWJLEFRMINT4AIXYXCHYI4BBNY35SF6XNGEAE7AGAYKMQWYQDUW"
OTHER_G = "GBZ2ZZIABD3UIXD54X7ROSCU6TSYB5NR3MYBOT3X7COMWFFXUJLEMSB7"


def readme_contexts(readme):
    """Every `--encryption-context k=v[,k=v]` of an `aws kms encrypt` command."""
    text = readme.replace("\\\n", " ")
    contexts = []
    for command in re.findall(r"aws kms encrypt[^\n]*", text):
        words = shlex.split(command.replace("$", "").replace('"', ""))
        if "--encryption-context" in words:
            pairs = words[words.index("--encryption-context") + 1]
            contexts.append(dict(pair.split("=", 1) for pair in pairs.split(",")))
    return contexts


def enclave_contexts(repo):
    messages = open(os.path.join(repo, "common/src/wire/messages.rs")).read()
    purpose = re.search(
        r'WALLET_BACKEND_PASSPHRASE_CONTEXT: \(&str, &str\) = \("(\w+)", "([\w-]+)"\)',
        messages,
    )
    keys = open(os.path.join(repo, "enclave/src/keys.rs")).read()
    assert '("pubkey", public_key)' in keys and '("format", "envelope")' in keys, \
        "the enclave's key contexts moved; update this check"
    return {
        "passphrase": {purpose.group(1): purpose.group(2)},
        "kms-direct": {"pubkey": G},
        "envelope": {"format": "envelope", "pubkey": G},
    }


def opens(kms, blob, context):
    try:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
        return True
    except ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidCiphertextException", e
        return False


@mock_aws
def main():
    repo = sys.argv[1]
    readme = open(os.path.join(repo, "README.md")).read()
    operator = readme_contexts(readme)
    enclave = enclave_contexts(repo)
    passphrase_steps = [c for c in operator if "purpose" in c]
    seed_steps = [c for c in operator if "pubkey" in c]
    assert passphrase_steps and seed_steps, f"README commands not found: {operator}"

    kms = boto3.client("kms", region_name="us-east-1")
    key = kms.create_key()["KeyMetadata"]["Arn"]
    for context in passphrase_steps:
        blob = kms.encrypt(KeyId=key, Plaintext=b"passphrase", EncryptionContext=context)[
            "CiphertextBlob"]
        assert opens(kms, blob, enclave["passphrase"]), (context, enclave["passphrase"])
        assert not opens(kms, blob, {}), "a passphrase opens without its context"
        assert not opens(kms, blob, enclave["kms-direct"])
    for context in seed_steps:
        context = {k: (G if v.startswith("G") else v) for k, v in context.items()}
        blob = kms.encrypt(KeyId=key, Plaintext=b"S" * 56, EncryptionContext=context)[
            "CiphertextBlob"]
        assert opens(kms, blob, enclave["kms-direct"]), (context, enclave["kms-direct"])
        assert not opens(kms, blob, {"pubkey": OTHER_G}), "a seed opens for another key"
        assert not opens(kms, blob, enclave["envelope"]), "a seed opens as a data key"
        assert not opens(kms, blob, enclave["passphrase"])
    print(f"the README's {len(operator)} `aws kms encrypt` steps make what the enclave "
          "opens, and nothing else (moto KMS)")


if __name__ == "__main__":
    main()
