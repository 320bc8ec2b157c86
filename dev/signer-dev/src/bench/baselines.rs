//! What the signer's work costs without the signer: the two cryptographic operations a
//! per-call signature needs, each on one core, and the transport's floor.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use ed25519_dalek::Signer;
use tokio::net::UnixListener;

use super::load::{EchoClient, Stats, measure, serve_echo};

/// Each single-core baseline runs this long.
const BASELINE_RUN: Duration = Duration::from_millis(1500);

/// Operations per second of `operation` on the calling thread.
fn per_second(mut operation: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..20 {
        operation()?;
    }
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < BASELINE_RUN {
        for _ in 0..10 {
            operation()?;
        }
        done += 10;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// An ed25519 signature of a transaction's payload hash: the enclave's signing step.
pub fn ed25519_sign_per_s() -> anyhow::Result<f64> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    let hash = [0x17u8; 32];
    per_second(|| {
        std::hint::black_box(key.sign(std::hint::black_box(&hash)));
        Ok(())
    })
}

/// RSA-2048 OAEP-SHA256 decryption with aws-lc-rs: how the enclave opens what KMS
/// sealed to its attested key, once per per-call signature.
pub fn rsa_decrypt_per_s() -> anyhow::Result<f64> {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
        .map_err(|e| anyhow::anyhow!("generating an RSA key: {e}"))?;
    let public = key.public_key();
    let public = aws_lc_rs::rsa::OaepPublicEncryptingKey::new(public)
        .map_err(|e| anyhow::anyhow!("RSA public key: {e}"))?;
    let key = OaepPrivateDecryptingKey::new(key).map_err(|e| anyhow::anyhow!("RSA key: {e}"))?;
    let mut sealed = vec![0u8; public.ciphertext_size()];
    let sealed = public
        .encrypt(&OAEP_SHA256_MGF1SHA256, &[0x33; 32], &mut sealed, None)
        .map_err(|e| anyhow::anyhow!("RSA encryption: {e}"))?
        .to_vec();
    let mut opened = vec![0u8; key.min_output_size()];
    per_second(|| {
        key.decrypt(&OAEP_SHA256_MGF1SHA256, &sealed, &mut opened, None)
            .map_err(|e| anyhow::anyhow!("RSA decryption: {e}"))?;
        Ok(())
    })
}

/// A bare Unix-socket round trip of a ping-sized message at `clients` connections.
pub async fn uds_round_trip(
    scratch: &Path,
    clients: usize,
    requests: usize,
) -> anyhow::Result<Stats> {
    let path = scratch.join("echo.sock");
    let listener = UnixListener::bind(&path).context("binding the baseline echo socket")?;
    let server = tokio::spawn(serve_echo(listener));
    let stats = measure(clients, requests, |_| EchoClient::connect(&path)).await;
    server.abort();
    stats
}
