//! The seed corpora: inputs made from the test vectors and the AWS fixtures in
//! testdata/, so each fuzz run starts deep in the code rather than from nothing.

use common::stellar::envelope::encode_envelope;
use common::stellar::soroban::encode_auth_entry;
use common::wire::frame::encode_message;
use common::wire::messages::{
    BuildFlavor, EnclaveMessage, Hello, HostMessage, KeyFormat, KeyMaterial, Request,
};
use common::wire::{ErrorCode, WireError};
use stellar_xdr::{
    AccountId, MuxedAccount, Preconditions, PublicKey, ScAddress, SorobanAuthorizationEntry,
    SorobanCredentials, TimeBounds, TimePoint, TransactionEnvelope, Uint256,
};

use crate::{DISTRIBUTION_SEED, KEY_ARN, NETWORK, RequestInput, fixtures, public_key, strkey};

/// Each target's name and its seed inputs.
pub fn corpora() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let requests = requests();
    let frames = frames(&requests);
    vec![
        ("enclave_request", requests),
        ("frame_decoder", frames),
        (
            "envelope_policy",
            crate::transaction_vectors()
                .iter()
                .filter_map(|(_, envelope)| encode_envelope(envelope).ok())
                .collect(),
        ),
        (
            "cms_envelope",
            vec![
                fixtures::KMS_CIPHERTEXT_FOR_RECIPIENT.to_vec(),
                fixtures::OPENSSL_CIPHERTEXT_FOR_RECIPIENT.to_vec(),
            ],
        ),
        (
            "attestation_document",
            vec![
                fixtures::ATTESTATION_PRODUCTION.to_vec(),
                fixtures::ATTESTATION_DEBUG.to_vec(),
            ],
        ),
    ]
}

fn key(seed: &[u8; 32]) -> KeyMaterial {
    KeyMaterial {
        public_key: strkey(seed),
        format: KeyFormat::KmsDirect,
        kms_key_id: KEY_ARN.into(),
        ciphertext: vec![0xc7; 64],
        sealed_seed: None,
    }
}

/// Every vector as a signing request (answered by KMS with its first seed, and denied),
/// fee-bumps again with the distribution account as fee source, and every Soroban entry
/// rewritten to authorize for the distribution account.
pub fn requests() -> Vec<Vec<u8>> {
    let mut requests = Vec::new();
    let mut push = |request: &Request, plaintext: &[u8]| {
        if let Ok(bytes) = postcard::to_stdvec(request) {
            requests.push(RequestInput::join(&bytes, plaintext));
        }
    };
    for (seeds, envelope) in crate::transaction_vectors() {
        let sign = |envelope: &TransactionEnvelope, seeds: &[[u8; 32]]| Request::Sign {
            network_passphrase: NETWORK.into(),
            transaction: encode_envelope(envelope).unwrap_or_default(),
            signers: seeds.iter().map(key).collect(),
        };
        let first = seeds.first().copied().unwrap_or_default();
        push(&sign(&envelope, &seeds), &first);
        push(&sign(&envelope, &seeds), &[]);
        if let Some(channel_sourced) = as_channel_transaction(&envelope, &first) {
            push(&sign(&channel_sourced, &[first]), &first);
            push(&sign(&channel_sourced, &[first]), &[]);
            push(&sign(&channel_sourced, &[first, DISTRIBUTION_SEED]), &first);
            push(&sign(&channel_sourced, &[first, [0x66; 32]]), &first);
        }
        if let TransactionEnvelope::TxFeeBump(mut bump) = envelope {
            bump.tx.fee_source = MuxedAccount::Ed25519(Uint256(public_key(&DISTRIBUTION_SEED)));
            push(
                &sign(&TransactionEnvelope::TxFeeBump(bump), &[DISTRIBUTION_SEED]),
                &DISTRIBUTION_SEED,
            );
        }
    }
    for (_, mut entry) in crate::soroban_vectors() {
        authorize_for_distribution(&mut entry);
        let Ok(entry) = encode_auth_entry(&entry) else {
            continue;
        };
        push(
            &Request::AuthorizeSoroban {
                network_passphrase: NETWORK.into(),
                entry,
                signature_expiration_ledger: 1_000_000,
                signer: key(&DISTRIBUTION_SEED),
            },
            &DISTRIBUTION_SEED,
        );
    }
    push(&Request::Ping { delay_ms: 0 }, &[]);
    push(&Request::GenerateKeys { count: 2 }, &[0x42; 32]);
    push(
        &Request::VerifyKey {
            key: key(&DISTRIBUTION_SEED),
        },
        &DISTRIBUTION_SEED,
    );
    push(
        &Request::RewrapKey {
            key: key(&DISTRIBUTION_SEED),
        },
        &DISTRIBUTION_SEED,
    );
    requests
}

/// A user's account that sources the operations of channel transactions.
const USER_SEED: [u8; 32] = [0x55; 32];

/// The vector's operations as the policy lets a channel carry them: the channel is the
/// transaction source and pays, a user's account sources every operation, the fee is
/// under the cap and maxTime is set (in the past, so the seed never goes stale).
fn as_channel_transaction(
    envelope: &TransactionEnvelope,
    channel_seed: &[u8; 32],
) -> Option<TransactionEnvelope> {
    let TransactionEnvelope::Tx(v1) = envelope else {
        return None;
    };
    let mut v1 = v1.clone();
    let user = MuxedAccount::Ed25519(Uint256(public_key(&USER_SEED)));
    v1.tx.source_account = MuxedAccount::Ed25519(Uint256(public_key(channel_seed)));
    v1.tx.fee = v1.tx.fee.min(10_000);
    v1.tx.cond = Preconditions::Time(TimeBounds {
        min_time: TimePoint(0),
        max_time: TimePoint(1_700_000_000),
    });
    for operation in &mut v1.tx.operations {
        operation.source_account = Some(user.clone());
    }
    Some(TransactionEnvelope::Tx(v1))
}

fn authorize_for_distribution(entry: &mut SorobanAuthorizationEntry) {
    if let SorobanCredentials::Address(credentials) | SorobanCredentials::AddressV2(credentials) =
        &mut entry.credentials
    {
        credentials.address = ScAddress::Account(AccountId(PublicKey::PublicKeyTypeEd25519(
            Uint256(public_key(&DISTRIBUTION_SEED)),
        )));
    }
}

/// Frames of both directions, each input a stream of several frames; the first byte
/// is the chunk size the target feeds the decoder with.
fn frames(requests: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let hello = Hello::current("signer-host", BuildFlavor::Production);
    let mut streams = Vec::new();
    for (index, input) in requests.iter().enumerate().step_by(8) {
        let Some(request) = RequestInput::split(input)
            .and_then(|input| postcard::from_bytes::<Request>(input.request).ok())
        else {
            continue;
        };
        let mut stream = vec![u8::try_from(index % 251).unwrap_or(1) + 1];
        let messages = [
            encode_message(&HostMessage::Hello(hello.clone())),
            encode_message(&HostMessage::Request {
                id: index as u64,
                request,
            }),
            encode_message(&EnclaveMessage::Response {
                id: index as u64,
                response: Err(WireError::new(ErrorCode::PolicyViolation, "refused")),
            }),
        ];
        for message in messages.into_iter().flatten() {
            let Ok(length) = u32::try_from(message.len()) else {
                continue;
            };
            stream.extend_from_slice(&length.to_be_bytes());
            stream.extend_from_slice(&message);
        }
        streams.push(stream);
    }
    streams
}
