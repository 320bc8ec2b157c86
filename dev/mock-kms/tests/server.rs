//! Drives the mock KMS over HTTPS with a plain HTTP/1 client, as `aws-sdk-kms` would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::mock_nsm::{MockCa, MockNsm};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use mock_kms::key_policy::Policy;
use mock_kms::{Faults, MockKms, MockKmsConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CALLER: &str = "arn:aws:iam::111122223333:role/signer-host";
const PUBKEY: &str = "GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H";

use common::hex;

fn pcrs(fill: u8) -> BTreeMap<u8, [u8; 48]> {
    (0..3).map(|i| (i, [fill + i; 48])).collect()
}

/// The policy shape the project ships, with PCR0..2 from `pcrs(fill)`.
fn pcr_policy(fill: u8) -> Policy {
    let p = pcrs(fill);
    let text = format!(
        r#"{{"Version":"2012-10-17","Statement":[
 {{"Sid":"Admin","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::111122223333:root"}},"Action":"kms:*","Resource":"*"}},
 {{"Sid":"HostManagesKeys","Effect":"Allow","Principal":{{"AWS":"{CALLER}"}},"Action":["kms:CreateKey","kms:DescribeKey","kms:Encrypt"],"Resource":"*"}},
 {{"Sid":"EnclaveDecrypt","Effect":"Allow","Principal":{{"AWS":"{CALLER}"}},"Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*","Condition":{{"StringEqualsIgnoreCase":{{"kms:RecipientAttestation:PCR0":"{}","kms:RecipientAttestation:PCR1":"{}","kms:RecipientAttestation:PCR2":"{}"}}}}}},
 {{"Sid":"DenyWithoutAttestation","Effect":"Deny","Principal":{{"AWS":"*"}},"Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*","Condition":{{"Null":{{"kms:RecipientAttestation:PCR0":"true"}}}}}}]}}"#,
        hex(&p[&0]),
        hex(&p[&1]),
        hex(&p[&2])
    );
    Policy::parse(&text).unwrap()
}

fn open_policy() -> Policy {
    Policy::parse(&format!(
        r#"{{"Statement":{{"Effect":"Allow","Principal":{{"AWS":"{CALLER}"}},"Action":"kms:*","Resource":"*"}}}}"#
    ))
    .unwrap()
}

struct Running {
    client: Client,
    faults: Arc<Faults>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

async fn start(dir: &Path, config: MockKmsConfig) -> Running {
    let ca = dir.join("kms-ca.pem");
    let kms = MockKms::bind(config, "127.0.0.1:0".parse().unwrap(), &ca)
        .await
        .unwrap();
    let client = Client::new(kms.local_addr(), &ca);
    let faults = kms.faults();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kms.serve(shutdown.clone()));
    Running {
        client,
        faults,
        shutdown,
        task,
    }
}

fn config(dir: &Path, policy: Policy, root: &[u8]) -> MockKmsConfig {
    MockKmsConfig::new(dir.join("kms.json"), policy, root.to_vec())
}

struct Client {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.error().1
    }
    fn error(&self) -> (StatusCode, &str, &str) {
        let header = self.headers["x-amzn-errortype"].to_str().unwrap();
        assert_eq!(self.body["__type"], header);
        (self.status, header, self.body["message"].as_str().unwrap())
    }
    fn bytes(&self, field: &str) -> Vec<u8> {
        B64.decode(self.body[field].as_str().unwrap()).unwrap()
    }
}

impl Client {
    fn new(addr: SocketAddr, ca_pem: &Path) -> Client {
        Client {
            addr,
            tls: mock_kms::admin_client::tls_connector(ca_pem).unwrap(),
        }
    }

    async fn post(&self, path: &str, target: Option<&str>, body: Vec<u8>) -> Answer {
        self.try_post(path, target, body).await.unwrap()
    }

    async fn try_post(
        &self,
        path: &str,
        target: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Answer, hyper::Error> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self.tls.connect(name, tcp).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = Request::post(path)
            .header("host", "localhost")
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
            );
        if let Some(op) = target {
            request = request.header("x-amz-target", format!("TrentService.{op}"));
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        })
    }

    async fn call(&self, op: &str, body: Value) -> Answer {
        self.post("/", Some(op), body.to_string().into_bytes())
            .await
    }

    async fn decrypt(&self, blob: &str, pubkey: &str, recipient: Option<Value>) -> Answer {
        let mut body = json!({"CiphertextBlob": blob, "EncryptionContext": {"pubkey": pubkey}});
        if let Some(recipient) = recipient {
            body["Recipient"] = recipient;
        }
        self.call("Decrypt", body).await
    }

    async fn admin(&self, update: &str) -> Answer {
        let body = update.as_bytes().to_vec();
        self.post("/__mock/faults", None, body).await
    }

    async fn create_key(&self) -> String {
        let answer = self.call("CreateKey", json!({"Description": "test"})).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn encrypt(&self, key: &str, plaintext: &[u8], pubkey: &str) -> String {
        let answer = self
            .call(
                "Encrypt",
                json!({"KeyId": key, "Plaintext": B64.encode(plaintext),
                       "EncryptionContext": {"pubkey": pubkey}}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["CiphertextBlob"].as_str().unwrap().to_string()
    }
}

/// An enclave stand-in: an RSA key and a mock NSM that attests to it.
struct Enclave {
    private: PrivateDecryptingKey,
    nsm: MockNsm,
}

impl Enclave {
    fn new(ca: &MockCa, fill: u8) -> Enclave {
        Enclave {
            private: PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap(),
            nsm: ca.nsm(&pcrs(fill)).unwrap(),
        }
    }
    fn recipient(&self) -> Value {
        let spki = self.private.public_key().as_der().unwrap();
        let doc = self.nsm.attest(Some(spki.as_ref()), None, None).unwrap();
        json!({"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
               "AttestationDocument": B64.encode(doc)})
    }
    fn open(&self, envelope: &[u8]) -> Vec<u8> {
        let parsed = common::attestation::cms::parse_envelope(envelope).unwrap();
        let oaep = OaepPrivateDecryptingKey::new(self.private.clone()).unwrap();
        let mut cek = vec![0u8; oaep.min_output_size()];
        let cek = oaep
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &parsed.encrypted_key,
                &mut cek,
                None,
            )
            .unwrap();
        let key =
            PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, cek).unwrap())
                .unwrap();
        let mut content = parsed.encrypted_content.clone();
        key.decrypt(&mut content, DecryptionContext::Iv128(parsed.iv.into()))
            .unwrap()
            .to_vec()
    }
}

#[tokio::test]
async fn plain_operations_errors_and_headers_under_an_open_policy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::generate().unwrap();
    let kms = start(dir.path(), config(dir.path(), open_policy(), ca.root_der())).await;
    let c = &kms.client;

    let created = c
        .call("CreateKey", json!({"Description": "dev", "Tags": []}))
        .await;
    assert_eq!(created.status, 200);
    assert_eq!(
        created.headers["content-type"],
        "application/x-amz-json-1.1"
    );
    assert_eq!(created.headers["x-amzn-requestid"].len(), 36);
    let meta = &created.body["KeyMetadata"];
    let arn = meta["Arn"].as_str().unwrap();
    let key_id = meta["KeyId"].as_str().unwrap();
    assert_eq!(
        arn,
        format!("arn:aws:kms:us-east-1:111122223333:key/{key_id}")
    );
    for (field, value) in [("KeyState", json!("Enabled")), ("Enabled", json!(true))] {
        assert_eq!(meta[field], value);
    }
    assert_eq!(meta["KeySpec"], "SYMMETRIC_DEFAULT");
    assert!(meta["CreationDate"].is_number());
    let described = c.call("DescribeKey", json!({"KeyId": key_id})).await;
    assert_eq!(described.body["KeyMetadata"]["Arn"], arn);

    let blob = c.encrypt(arn, b"SECRETSEED", PUBKEY).await;
    let plain = c.decrypt(&blob, PUBKEY, None).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(plain.bytes("Plaintext"), b"SECRETSEED");
    assert_eq!(plain.body["KeyId"], arn);

    let context = json!({"pubkey": PUBKEY});
    let body = json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context});
    let data_key = c.call("GenerateDataKey", body).await;
    assert_eq!(data_key.bytes("Plaintext").len(), 32);
    let data_key_blob = data_key.body["CiphertextBlob"].as_str().unwrap();
    let reopened = c.decrypt(data_key_blob, PUBKEY, None).await;
    assert_eq!(reopened.bytes("Plaintext"), data_key.bytes("Plaintext"));

    let wrong_context = c.decrypt(&blob, "GOTHER", None).await;
    assert_eq!(wrong_context.code(), "InvalidCiphertextException");
    let mut tampered = B64.decode(&blob).unwrap();
    *tampered.last_mut().unwrap() ^= 1;
    let tampered = c.decrypt(&B64.encode(tampered), PUBKEY, None).await;
    assert_eq!(tampered.code(), "InvalidCiphertextException");
    let other = c.create_key().await;
    let body = json!({"CiphertextBlob": blob, "KeyId": other, "EncryptionContext": context});
    assert_eq!(
        c.call("Decrypt", body).await.code(),
        "IncorrectKeyException"
    );
    let body = json!({"KeyId": "alias/nope", "Plaintext": B64.encode(b"x")});
    let unknown = c.call("Encrypt", body).await;
    assert_eq!(unknown.error().0, 400);
    assert_eq!(unknown.code(), "NotFoundException");
    let body = json!({"KeyId": arn, "Plaintext": B64.encode([0u8; 4097])});
    let too_big = c.call("Encrypt", body).await;
    assert!(
        too_big
            .error()
            .2
            .contains("expected 1 to 4096 bytes, got 4097")
    );
    let body = json!({"KeyId": arn, "KeySpec": "AES_256", "NumberOfBytes": 32});
    assert_eq!(
        c.call("GenerateDataKey", body).await.code(),
        "ValidationException"
    );
    // Refused with a 400, or (if the unread rest of the body resets the connection
    // first) by closing the connection.
    if let Ok(huge) = c.try_post("/", Some("Encrypt"), vec![b' '; 70_000]).await {
        assert_eq!(huge.code(), "ValidationException");
    }
    let unsupported = c.call("ScheduleKeyDeletion", json!({})).await;
    assert_eq!(unsupported.code(), "UnknownOperationException");
    kms.stop().await;
}

#[tokio::test]
async fn attested_decrypt_is_bound_to_pcrs_root_and_freshness() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::generate().unwrap();
    let cfg = config(dir.path(), pcr_policy(0x10), ca.root_der());
    let kms = start(dir.path(), cfg).await;
    let c = &kms.client;
    let key = c.create_key().await;
    let blob = c.encrypt(&key, b"SECRETSEED", PUBKEY).await;
    let enclave = Enclave::new(&ca, 0x10);

    let sealed = c.decrypt(&blob, PUBKEY, Some(enclave.recipient())).await;
    assert_eq!(sealed.status, 200, "{}", sealed.body);
    assert!(sealed.body.get("Plaintext").is_none(), "{}", sealed.body);
    let opened = enclave.open(&sealed.bytes("CiphertextForRecipient"));
    assert_eq!(opened, b"SECRETSEED");

    let body = json!({"KeyId": key, "NumberOfBytes": 32, "Recipient": enclave.recipient(),
                      "EncryptionContext": {"pubkey": PUBKEY}});
    let generated = c.call("GenerateDataKey", body).await;
    assert_eq!(generated.status, 200, "{}", generated.body);
    assert!(generated.body.get("Plaintext").is_none());
    let data_key = enclave.open(&generated.bytes("CiphertextForRecipient"));
    let data_key_blob = generated.body["CiphertextBlob"].as_str().unwrap();
    let again = c
        .decrypt(data_key_blob, PUBKEY, Some(enclave.recipient()))
        .await;
    assert_eq!(
        enclave.open(&again.bytes("CiphertextForRecipient")),
        data_key
    );

    let denied = |answer: Answer, why: &str| {
        let (status, code, message) = answer.error();
        assert_eq!((status.as_u16(), code), (400, "AccessDeniedException"));
        assert!(message.contains(why), "{message:?} should say {why:?}");
    };
    let no_recipient = c.decrypt(&blob, PUBKEY, None).await;
    denied(no_recipient, "DenyWithoutAttestation");
    let other_build = Enclave::new(&ca, 0x20).recipient();
    let other_build = c.decrypt(&blob, PUBKEY, Some(other_build)).await;
    denied(other_build, "no statement allows kms:Decrypt");
    let foreign = Enclave::new(&MockCa::generate().unwrap(), 0x10).recipient();
    let foreign = c.decrypt(&blob, PUBKEY, Some(foreign)).await;
    denied(foreign, "attestation document refused");
    let keyless = enclave.nsm.attest(None, None, None).unwrap();
    let keyless = json!({"AttestationDocument": B64.encode(keyless)});
    denied(
        c.decrypt(&blob, PUBKEY, Some(keyless)).await,
        "no public_key",
    );

    // The mock's clock moved 10 minutes on: the same document, verified and cached
    // a moment ago, is now stale (the cache keeps the chain check, not the freshness).
    let recipient = enclave.recipient();
    let first_use = c.decrypt(&blob, PUBKEY, Some(recipient.clone())).await;
    assert_eq!(first_use.status, 200, "{}", first_use.body);
    kms.faults.set_clock_skew(600);
    let stale = c.decrypt(&blob, PUBKEY, Some(recipient.clone())).await;
    denied(stale, "stale");
    kms.faults.set_clock_skew(0);
    let fresh_again = c.decrypt(&blob, PUBKEY, Some(recipient)).await;
    assert_eq!(fresh_again.status, 200);

    let wrong_context = c.decrypt(&blob, "GOTHER", Some(enclave.recipient())).await;
    assert_eq!(wrong_context.code(), "InvalidCiphertextException");
    let body = json!({"KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab", "KeySpec": "AES_256",
                      "Recipient": enclave.recipient()});
    assert_eq!(
        c.call("GenerateDataKey", body).await.code(),
        "NotFoundException"
    );
    kms.stop().await;
}

#[tokio::test]
async fn zero_max_age_refuses_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::generate().unwrap();
    let mut cfg = config(dir.path(), pcr_policy(0x10), ca.root_der());
    cfg.attestation_max_age = Duration::ZERO;
    let kms = start(dir.path(), cfg).await;
    let key = kms.client.create_key().await;
    let blob = kms.client.encrypt(&key, b"S", PUBKEY).await;
    let recipient = Enclave::new(&ca, 0x10).recipient();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let answer = kms.client.decrypt(&blob, PUBKEY, Some(recipient)).await;
    assert_eq!(answer.code(), "AccessDeniedException");
    assert!(
        answer.error().2.contains("expected within 0 ms"),
        "{}",
        answer.body
    );
    kms.stop().await;
}

#[tokio::test]
async fn fault_switches_programmatic_and_over_the_admin_route() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::generate().unwrap();
    let kms = start(dir.path(), config(dir.path(), open_policy(), ca.root_der())).await;
    let c = &kms.client;

    kms.faults.set_throttle(true);
    assert_eq!(
        c.call("CreateKey", json!({})).await.code(),
        "ThrottlingException"
    );
    let state = c.admin(r#"{"throttle": false, "latency_ms": 300}"#).await;
    assert_eq!(state.status, 200);
    // One KMS request so far (the throttled CreateKey); the admin route is not counted.
    let expected = json!({"latency_ms": 300, "throttle": false, "unavailable": false,
                          "clock_skew_s": 0, "requests": 1});
    assert_eq!(state.body, expected);
    let started = Instant::now();
    c.create_key().await;
    assert!(started.elapsed() >= Duration::from_millis(300));

    kms.faults.set_latency(Duration::ZERO);
    kms.faults.set_unavailable(true);
    let unavailable = c.call("CreateKey", json!({})).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.body, Value::Null);
    let reset = c.admin(r#"{"unavailable": false}"#).await;
    assert_eq!(reset.body["unavailable"], false);
    assert_eq!(reset.body["requests"], 3);
    c.create_key().await;
    assert_eq!(c.admin(r#"{"slow": true}"#).await.status, 400);
    kms.stop().await;
}

#[tokio::test]
async fn keys_persist_across_a_restart_and_access_keys_can_be_restricted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::generate().unwrap();
    let kms = start(dir.path(), config(dir.path(), open_policy(), ca.root_der())).await;
    let key = kms.client.create_key().await;
    let blob = kms.client.encrypt(&key, b"kept", PUBKEY).await;
    kms.stop().await;

    let mut cfg = config(dir.path(), open_policy(), ca.root_der());
    cfg.allowed_access_keys = Some(vec!["AKIDOTHER".into()]);
    let kms = start(dir.path(), cfg).await;
    let refused = kms.client.decrypt(&blob, PUBKEY, None).await;
    assert_eq!(refused.code(), "UnrecognizedClientException");
    kms.stop().await;

    let mut cfg = config(dir.path(), open_policy(), ca.root_der());
    cfg.allowed_access_keys = Some(vec!["AKIDTEST".into()]);
    let kms = start(dir.path(), cfg).await;
    let reopened = kms.client.decrypt(&blob, PUBKEY, None).await;
    assert_eq!(reopened.bytes("Plaintext"), b"kept");
    kms.stop().await;
}

#[test]
fn binary_prints_its_address_and_exits_cleanly_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let ca = MockCa::generate().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let root = file("root.pem", ca.root_pem());
    let policy =
        r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}"#;
    let policy = file("policy.json", policy);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signer-mock-kms"))
        .args(["--state".as_ref(), dir.path().join("kms.json").as_os_str()])
        .args(["--policy".as_ref(), policy.as_os_str()])
        .args(["--attestation-root".as_ref(), root.as_os_str()])
        .args(["--ca-out".as_ref(), dir.path().join("ca.pem").as_os_str()])
        .env("SIGNER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("listening on https://127.0.0.1:"),
        "{line:?}"
    );
    assert!(dir.path().join("ca.pem").exists());
    let pid = child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(kill.unwrap().success());
    assert!(child.wait().unwrap().success());
    // Exactly one line on stdout.
    assert_eq!(stdout.read_line(&mut line).unwrap(), 0);
}
