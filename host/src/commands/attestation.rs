//! `signer-host attestation get` and `attestation verify`: which enclave build a host
//! talks to. `get` asks the running host for a fresh document carrying a nonce;
//! `verify` checks a document (from `get --json`, a file or standard input) against the
//! AWS Nitro root (or another), the nonce, the expected PCRs and the settings digest.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use common::attestation::document::{AttestationDocument, certificate_der_from_pem, verify};
use hyper::Method;
use serde_json::{Value, json};

use super::{SocketArg, print_answer, request};

#[derive(Debug, Subcommand)]
pub enum AttestationCommand {
    /// Ask the running host's enclave for a fresh attestation document carrying NONCE
    /// (1 to 64 bytes of hex; pick a new random one each time) and the digest of its
    /// measured settings. The document has no public key: KMS can decrypt nothing to it.
    ///
    /// Example: `signer-host attestation get --nonce $(openssl rand -hex 32) --json >
    /// attestation.json`
    Get {
        #[command(flatten)]
        target: SocketArg,
        #[arg(long)]
        nonce: String,
    },
    /// Verify an attestation document: its certificate chain up to the root (the AWS
    /// Nitro Enclaves root unless --root), its signature, its age, and each expectation
    /// given. Exits non-zero, naming the first mismatch, unless all hold.
    ///
    /// Example: `signer-host attestation verify attestation.json --nonce $NONCE --pcr
    /// 0=$PCR0 --pcr 1=$PCR1 --pcr 2=$PCR2`
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The document: `attestation get --json` output, base64, or raw CBOR, from this
    /// file; `-` or nothing reads standard input.
    pub document: Option<PathBuf>,
    /// The nonce the document must carry (hex).
    #[arg(long)]
    pub nonce: Option<String>,
    /// An expected measurement, INDEX=HEX (repeatable): the PCR0/1/2 nitro-cli printed
    /// for the build you deployed.
    #[arg(long = "pcr", value_parser = parse_pcr)]
    pub pcrs: Vec<(u8, Vec<u8>)>,
    /// The settings digest the document's user_data must be (`signer-enclave
    /// --print-config` prints it).
    #[arg(long)]
    pub settings_digest: Option<String>,
    /// The root certificate (PEM) instead of the AWS Nitro Enclaves root: the local
    /// stack's mock CA, `.signer-dev/mock-nsm-ca/root.pem`.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Check as of this time (Unix seconds) instead of now: for documents kept from
    /// the past.
    #[arg(long)]
    pub at: Option<i64>,
    /// The oldest a document may be, seconds.
    #[arg(long, default_value_t = 300)]
    pub max_age_secs: i64,
    /// Check the chain, age, nonce and digest only, without PCR0/1/2: then any image on
    /// any Nitro instance could have made the document.
    #[arg(long)]
    pub no_pcrs: bool,
    /// Accept a document without a nonce to compare (a replay up to --max-age-secs old
    /// would pass).
    #[arg(long)]
    pub allow_replay: bool,
    /// Accept a debug-mode enclave (PCR0 all zeros: its memory is readable by its host).
    #[arg(long)]
    pub allow_debug: bool,
}

fn parse_pcr(text: &str) -> Result<(u8, Vec<u8>), String> {
    let (index, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected INDEX=HEX"))?;
    let index: u8 = index
        .parse()
        .map_err(|_| format!("{index:?} is not a PCR index"))?;
    let value = common::unhex(value).ok_or_else(|| format!("PCR{index}: not hex"))?;
    Ok((index, value))
}

pub async fn run(json_output: bool, command: AttestationCommand) -> anyhow::Result<()> {
    match command {
        AttestationCommand::Get { target, nonce } => {
            let path = format!("/v1/attestation?nonce={nonce}");
            let answer = request(&target.socket, Method::GET, &path, None).await?;
            print_answer(json_output, &answer)
        }
        AttestationCommand::Verify(args) => {
            let document = read_document(args.document.as_ref())?;
            let verified = check(&document, &Expectations::from_args(&args)?)?;
            print_answer(json_output, &describe(&verified))
        }
    }
}

/// The document's bytes from `get --json` output, base64 text or raw CBOR.
fn read_document(path: Option<&PathBuf>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match path {
        Some(path) if path.as_os_str() != "-" => {
            bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the document from standard input")?;
        }
    }
    if bytes.first() == Some(&0x84) {
        return Ok(bytes);
    }
    let text = String::from_utf8(bytes).context("the document is neither CBOR nor text")?;
    let text = text.trim();
    let base64 = if text.starts_with('{') {
        let answer: Value = serde_json::from_str(text).context("reading the JSON answer")?;
        answer["document"]
            .as_str()
            .context("the JSON has no \"document\" field")?
            .to_string()
    } else {
        text.to_string()
    };
    B64.decode(base64.trim())
        .context("the document is not base64 (nor CBOR, nor `attestation get --json` output)")
}

/// What a document must show.
pub struct Expectations {
    /// Whether a debug-mode enclave (PCR0 all zeros) may pass.
    pub allow_debug: bool,
    pub root_der: Vec<u8>,
    pub at_unix: i64,
    pub max_age_secs: i64,
    pub nonce: Option<Vec<u8>>,
    pub pcrs: Vec<(u8, Vec<u8>)>,
    pub settings_digest: Option<Vec<u8>>,
}

impl Expectations {
    fn from_args(args: &VerifyArgs) -> anyhow::Result<Expectations> {
        let root_pem = match &args.root {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
            }
            None => common::attestation::AWS_NITRO_ROOT_PEM.to_vec(),
        };
        let unhex = |what: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| common::unhex(t).with_context(|| format!("{what} is not hex")))
                .transpose()
        };
        let pinned: Vec<u8> = args.pcrs.iter().map(|(index, _)| *index).collect();
        if !args.no_pcrs && ![0, 1, 2].iter().all(|index| pinned.contains(index)) {
            bail!(
                "give --pcr 0=HEX --pcr 1=HEX --pcr 2=HEX (the build you deployed), or \
                 --no-pcrs to check the chain alone (any Nitro image would pass)"
            );
        }
        if args.nonce.is_none() && !args.allow_replay {
            bail!("give --nonce (the one `attestation get` sent), or --allow-replay");
        }
        Ok(Expectations {
            allow_debug: args.allow_debug,
            root_der: certificate_der_from_pem(&root_pem).context("reading the root")?,
            at_unix: args
                .at
                .unwrap_or_else(|| i64::try_from(common::now_unix_secs()).unwrap_or(i64::MAX)),
            max_age_secs: args.max_age_secs,
            nonce: unhex("--nonce", &args.nonce)?,
            pcrs: args.pcrs.clone(),
            settings_digest: unhex("--settings-digest", &args.settings_digest)?,
        })
    }
}

/// Verifies `document` and checks every expectation; the first mismatch is the error.
pub fn check(document: &[u8], expected: &Expectations) -> anyhow::Result<AttestationDocument> {
    let doc = verify(document, &expected.root_der, expected.at_unix)
        .context("the document does not verify against the root")?;
    let issued = i64::try_from(doc.timestamp_ms / 1000).unwrap_or(i64::MAX);
    if issued > expected.at_unix.saturating_add(60)
        || expected.at_unix.saturating_sub(issued) > expected.max_age_secs
    {
        bail!(
            "the document was issued at {issued}, not within {} s before {}",
            expected.max_age_secs,
            expected.at_unix
        );
    }
    let debug = doc
        .pcrs
        .get(&0)
        .is_none_or(|pcr0| pcr0.iter().all(|&b| b == 0));
    if debug && !expected.allow_debug {
        bail!(
            "the document comes from a debug-mode enclave (PCR0 all zeros), whose memory \
             its host can read; --allow-debug accepts it"
        );
    }
    if let Some(nonce) = &expected.nonce {
        expect_equal("nonce", nonce, doc.nonce.as_deref())?;
    }
    for (index, value) in &expected.pcrs {
        expect_equal(
            &format!("PCR{index}"),
            value,
            doc.pcrs.get(index).map(Vec::as_slice),
        )?;
    }
    if let Some(digest) = &expected.settings_digest {
        expect_equal(
            "settings digest (user_data)",
            digest,
            doc.user_data.as_deref(),
        )?;
    }
    Ok(doc)
}

/// Fails, naming `what`, unless the document's `actual` value is `expected`.
fn expect_equal(what: &str, expected: &[u8], actual: Option<&[u8]>) -> anyhow::Result<()> {
    if actual == Some(expected) {
        return Ok(());
    }
    bail!(
        "{what}: expected {}, the document has {}",
        common::hex(expected),
        actual.map_or("none".into(), common::hex)
    )
}

fn describe(doc: &AttestationDocument) -> Value {
    let pcrs: serde_json::Map<String, Value> = doc
        .pcrs
        .iter()
        // The measurements Nitro defines (image, kernel, application, IAM role,
        // instance, signing certificate); the rest are unused.
        .filter(|(index, _)| matches!(**index, 0..=4 | 8))
        .map(|(index, value)| (format!("pcr{index}"), json!(common::hex(value))))
        .collect();
    json!({
        "verified": true,
        "module_id": doc.module_id,
        "timestamp_ms": doc.timestamp_ms,
        "pcrs": pcrs,
        "user_data": doc.user_data.as_deref().map(common::hex),
        "nonce": doc.nonce.as_deref().map(common::hex),
        "has_public_key": doc.public_key.is_some(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../testdata/fixtures/nitro-attestation/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn expected_json() -> Value {
        serde_json::from_slice(&fixture("expected.json")).unwrap()
    }

    /// The debug-mode document, as of a minute after it was issued.
    fn expectations() -> Expectations {
        let facts = &expected_json()["doc-2023-09-18-debug.cbor"];
        let pcr = |i: &str| common::unhex(facts["pcrs"][i].as_str().unwrap()).unwrap();
        Expectations {
            allow_debug: true,
            root_der: certificate_der_from_pem(common::attestation::AWS_NITRO_ROOT_PEM).unwrap(),
            at_unix: facts["timestamp_ms"].as_i64().unwrap() / 1000 + 60,
            max_age_secs: 300,
            nonce: common::unhex(facts["nonce_hex"].as_str().unwrap()),
            pcrs: vec![(0, pcr("0")), (3, pcr("3")), (4, pcr("4"))],
            settings_digest: common::unhex(facts["user_data_hex"].as_str().unwrap()),
        }
    }

    #[test]
    fn the_embedded_root_is_the_aws_nitro_root_of_the_fixtures() {
        assert_eq!(
            common::attestation::AWS_NITRO_ROOT_PEM,
            fixture("aws-nitro-root.pem").as_slice()
        );
    }

    #[test]
    fn a_real_aws_document_verifies_with_its_nonce_pcrs_and_user_data() {
        let document = fixture("doc-2023-09-18-debug.cbor");
        let doc = check(&document, &expectations()).unwrap();
        assert_eq!(doc.module_id, "i-0918f6c55e3b61d89-enc018aa8b8e2285d13");
        assert_eq!(describe(&doc)["verified"], true);
    }

    #[test]
    fn every_mismatch_is_refused_and_named() {
        let document = fixture("doc-2023-09-18-debug.cbor");
        let refused = |change: &dyn Fn(&mut Expectations)| {
            let mut expected = expectations();
            change(&mut expected);
            format!("{:#}", check(&document, &expected).unwrap_err())
        };
        assert!(refused(&|e| e.nonce = Some(vec![1, 2, 3])).contains("nonce"));
        // The fixture is a debug-mode enclave: refused unless explicitly accepted.
        assert!(refused(&|e| e.allow_debug = false).contains("debug-mode"));
        assert!(refused(&|e| e.pcrs.push((1, vec![7; 48]))).contains("PCR1"));
        assert!(refused(&|e| e.settings_digest = Some(vec![0; 32])).contains("settings digest"));
        // A day later: the leaf certificate has expired.
        assert!(refused(&|e| e.at_unix += 86_400).contains("does not verify"));
        // Inside the certificate's window, but older than the caller accepts.
        assert!(refused(&|e| e.max_age_secs = 10).contains("issued at"));
        // Another root (one byte of its key changed): the chain does not lead to it.
        assert!(
            refused(&|e| {
                let last = e.root_der.len() - 40;
                e.root_der[last] ^= 1;
            })
            .contains("does not verify")
        );
        // Base64 and `get --json` forms read as the same bytes.
        let dir = tempfile::tempdir().unwrap();
        let as_json = dir.path().join("answer.json");
        std::fs::write(
            &as_json,
            json!({"document": B64.encode(&document)}).to_string(),
        )
        .unwrap();
        assert_eq!(read_document(Some(&as_json)).unwrap(), document);
        let as_base64 = dir.path().join("document.b64");
        std::fs::write(&as_base64, B64.encode(&document)).unwrap();
        assert_eq!(read_document(Some(&as_base64)).unwrap(), document);
    }
}
