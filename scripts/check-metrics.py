#!/usr/bin/env python3
"""Reads the host's GET /metrics with the Prometheus project's own Python parser
(prometheus_client.parser), after real traffic on the local stack.

It starts `signer-dev up`, acquires a channel, has a channel-sourced payment built by
the Python stellar-sdk (scripts/build-payment.py, the walkthrough's builder) signed, has one with a fee over the cap refused, scrapes
/metrics and checks every family the README documents, with the values that traffic
must have produced (but signer_api_limit_refusals, listed only once a host API limit
refused something: tests/faults.rs reads it after refusals).

    usage: check-metrics.py PATH/TO/signer-dev
"""
import os
import subprocess
import sys
import tempfile
import warnings

warnings.simplefilter("ignore")

from prometheus_client.parser import text_string_to_metric_families
from signer_api import call, start, stop


def payment(channel, destination, base_fee):
    """The walkthrough's payment builder (scripts/build-payment.py), so CI runs it too."""
    builder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "build-payment.py")
    return subprocess.run(
        [sys.executable, builder, channel, destination, "1", "--base-fee", str(base_fee)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def main():
    signer_dev = sys.argv[1]
    with tempfile.TemporaryDirectory() as state:
        sock = f"{state}/host.sock"
        stack = start(signer_dev, state)
        try:
            _, keys = call(sock, "GET", "/v1/keys?role=channel")
            channel = keys["keys"][0]["public_key"]
            status, lease = call(sock, "POST", "/v1/channels/acquire", {})
            assert status == 200, lease
            status, answer = call(sock, "POST", "/v1/sign", {
                "transaction": payment(channel, channel, 100), "signers": [channel]})
            assert status == 200, answer
            status, answer = call(sock, "POST", "/v1/sign", {
                "transaction": payment(channel, channel, 50_000_000), "signers": [channel]})
            assert answer["error"]["code"] == "policy_violation", answer
            status, content_type, text = call(sock, "GET", "/metrics", raw=True)
            assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), \
                (status, content_type)
        finally:
            stop(stack)

    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(family, metric_type, **labels):
        assert family in families, f"{family} missing; families: {sorted(families)}"
        assert families[family].type == metric_type, (family, families[family].type)
        found = [s.value for s in families[family].samples
                 if all(s.labels.get(k) == v for k, v in labels.items())
                 and not s.name.endswith(("_bucket", "_sum", "_created"))]
        assert found, f"no {family} sample with {labels}: {families[family].samples}"
        return found[-1]

    assert value("signer_signatures", "counter", role="channel", kind="sign", result="signed") == 1
    assert value("signer_signatures", "counter", role="channel", kind="sign", result="refused") == 1
    assert value("signer_policy_refusals", "counter", rule="fee_cap") == 1
    assert value("signer_sign_duration_seconds", "histogram", kind="sign") == 2
    assert value("signer_enclave_round_trip_seconds", "histogram") >= 2
    assert value("signer_channel_acquisitions", "counter", result="acquired") == 1
    pool = sum(value("signer_channel_accounts", "gauge", state=s)
               for s in ("idle", "locked", "expired"))
    assert pool == 8, pool
    assert value("signer_kms_requests", "counter", operation="Decrypt", result="ok") >= 1
    assert value("signer_kms_requests", "counter", operation="GenerateDataKey", result="ok") >= 1
    assert value("signer_kms_duration_seconds", "histogram", operation="Decrypt", result="ok") >= 1
    assert value("signer_fee_budget_remaining_stroops", "gauge") == 1_000_000_000
    assert value("signer_build_info", "gauge", enclave_build="mock") == 1
    assert value("signer_enclave_up", "gauge") == 1
    # Nothing met a host API limit, and a family without samples is not listed: the
    # refusal counter is read after real refusals by tests/faults.rs instead.
    assert "signer_api_limit_refusals" not in families, families["signer_api_limit_refusals"]
    print(f"/metrics parsed by prometheus_client: {len(families)} families, every documented "
          "one present with the values the traffic produced (limit refusals: none)")


if __name__ == "__main__":
    main()
