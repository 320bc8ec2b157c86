# syntax=docker/dockerfile:1
#
# The production enclave image: a static (musl) build of signer-enclave without the
# mock feature, and its configuration, nothing else. `nitro-cli build-enclave` turns it
# into the EIF whose measurements (PCR0..2) the KMS key policy names, so everything in
# this image is measured: the binary AND the settings below. Change a setting and the
# PCRs change, which is the point: the network, the distribution account and the policy
# are part of what KMS attests.
#
# Deterministic: the same commit, build arguments and base image digest give the same
# bytes, so anyone can rebuild and compare PCRs. Build paths and the linker's build id
# are kept out of the binary, file times are SOURCE_DATE_EPOCH, the toolchain is pinned
# by digest and dependencies by Cargo.lock. Use scripts/build-eif, which sets
# SOURCE_DATE_EPOCH from the commit and checks the arguments.

# rust:1.98.0-alpine3.22 (multi-arch index: linux/amd64 and linux/arm64). Alpine's native
# target is musl, so the binary is static without a cross toolchain.
FROM rust:1.98.0-alpine3.22@sha256:2e452153b2dc6bed8ef123c4801cfd3f637e7c092846f974ecdce5e64af3120c AS build

ARG SOURCE_DATE_EPOCH=0
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    RUSTFLAGS="--remap-path-prefix=/src=/build --remap-path-prefix=/usr/local/cargo=/cargo -C link-arg=-Wl,--build-id=none"

WORKDIR /src
# Manifests first: the dependency download is cached across source edits.
COPY Cargo.toml Cargo.lock ./
COPY common/Cargo.toml common/
COPY enclave/Cargo.toml enclave/
COPY host/Cargo.toml host/
COPY dev/mock-kms/Cargo.toml dev/mock-kms/
COPY dev/signer-dev/Cargo.toml dev/signer-dev/
COPY tests/Cargo.toml tests/
# Stub sources so the workspace loads; only the dependency graph matters here.
RUN mkdir -p common/src enclave/src host/src dev/mock-kms/src dev/signer-dev/src tests/harness \
    && touch common/src/lib.rs tests/harness/mod.rs \
    && for crate in enclave host dev/mock-kms; do touch "$crate/src/lib.rs" "$crate/src/main.rs"; done \
    && touch dev/signer-dev/src/main.rs \
    && for t in stack signing soroban channels hostile_host docs; do touch "tests/$t.rs"; done \
    && cargo fetch --locked

COPY common common
COPY enclave enclave
COPY host host
COPY dev dev
COPY tests tests
COPY kms-policy kms-policy
# Production build: no `mock` feature, so no mock NSM, no Unix endpoints, no test CA.
RUN target="$(uname -m)-unknown-linux-musl" \
    && cargo build --locked --offline --release -p enclave --target "$target" \
    && mkdir -p /out \
    && cp "target/$target/release/signer-enclave" /out/signer-enclave \
    && chmod 0555 /out/signer-enclave \
    && touch -d "@${SOURCE_DATE_EPOCH}" /out/signer-enclave \
    && /out/signer-enclave --version

# The measured configuration. Required: NETWORK_PASSPHRASE, KMS_KEY_ARN,
# DISTRIBUTION_ACCOUNT. The rest have the enclave's own defaults (KMS_REGION: the
# key ARN's).
ARG NETWORK_PASSPHRASE
ARG KMS_KEY_ARN
ARG DISTRIBUTION_ACCOUNT
RUN test -n "$NETWORK_PASSPHRASE" || { echo "build argument NETWORK_PASSPHRASE is required" >&2; exit 1; }; \
    test -n "$KMS_KEY_ARN" || { echo "build argument KMS_KEY_ARN is required" >&2; exit 1; }; \
    test -n "$DISTRIBUTION_ACCOUNT" || { echo "build argument DISTRIBUTION_ACCOUNT is required" >&2; exit 1; }

FROM scratch
ARG NETWORK_PASSPHRASE
ARG KMS_KEY_ARN
# A rotation build only: the previous KMS key, still read until every key is rewrapped.
ARG PREVIOUS_KMS_KEY_ARN=""
ARG KMS_REGION=""
ARG DISTRIBUTION_ACCOUNT
ARG KMS_ENDPOINT=""
ARG POLICY_MAX_TIME_WINDOW_SECS=300
ARG POLICY_MAX_FEE=10000000
ARG POLICY_MAX_FEE_BUMP_FEE=10000000
ARG POLICY_DISTRIBUTION_UNRESTRICTED=false
ARG POLICY_SOROBAN_CONTRACTS=""
ARG POLICY_FEE_BUDGET_STROOPS=1000000000
ARG POLICY_MAX_SPONSORED_ACCOUNTS=1000
ARG POLICY_BUDGET_WINDOW_SECS=3600
ARG KEY_CACHE_TTL_SECS=0
ARG KEY_CACHE_MAX_USES=100
ARG ATTESTATION_ROTATION_SECS=120
ENV SIGNER_NETWORK_PASSPHRASE="${NETWORK_PASSPHRASE}" \
    SIGNER_KMS_KEY_ARN="${KMS_KEY_ARN}" \
    SIGNER_PREVIOUS_KMS_KEY_ARN="${PREVIOUS_KMS_KEY_ARN}" \
    SIGNER_KMS_REGION="${KMS_REGION}" \
    SIGNER_DISTRIBUTION_ACCOUNT="${DISTRIBUTION_ACCOUNT}" \
    SIGNER_KMS_ENDPOINT="${KMS_ENDPOINT}" \
    SIGNER_POLICY_MAX_TIME_WINDOW_SECS="${POLICY_MAX_TIME_WINDOW_SECS}" \
    SIGNER_POLICY_MAX_FEE="${POLICY_MAX_FEE}" \
    SIGNER_POLICY_MAX_FEE_BUMP_FEE="${POLICY_MAX_FEE_BUMP_FEE}" \
    SIGNER_POLICY_DISTRIBUTION_UNRESTRICTED="${POLICY_DISTRIBUTION_UNRESTRICTED}" \
    SIGNER_POLICY_SOROBAN_CONTRACTS="${POLICY_SOROBAN_CONTRACTS}" \
    SIGNER_POLICY_FEE_BUDGET_STROOPS="${POLICY_FEE_BUDGET_STROOPS}" \
    SIGNER_POLICY_MAX_SPONSORED_ACCOUNTS="${POLICY_MAX_SPONSORED_ACCOUNTS}" \
    SIGNER_POLICY_BUDGET_WINDOW_SECS="${POLICY_BUDGET_WINDOW_SECS}" \
    SIGNER_KEY_CACHE_TTL_SECS="${KEY_CACHE_TTL_SECS}" \
    SIGNER_KEY_CACHE_MAX_USES="${KEY_CACHE_MAX_USES}" \
    SIGNER_ATTESTATION_ROTATION_SECS="${ATTESTATION_ROTATION_SECS}" \
    SIGNER_ENCLAVE_LISTEN=vsock://4294967295:5000 \
    SIGNER_KMS_RELAY=vsock://3:8000 \
    SIGNER_LOG_FORMAT=json
COPY --from=build /out/signer-enclave /signer-enclave
ENTRYPOINT ["/signer-enclave"]
