//! The one harness of the whole-stack tests: runs the real binaries (`signer-enclave`
//! in its mock build, `signer-host`, `signer-dev up`), each with its log in a temporary
//! directory, and talks to them over the host API socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use host::api_client::request_once;
use host::store::{AuditLog, KeyStore};

pub mod postgres;
pub mod raw_enclave;
pub mod stellar;
pub mod stub_rpc;
use hyper::{Method, StatusCode};
use serde_json::Value;

/// A workspace binary. `cargo test --workspace` builds every binary of the workspace
/// into the directory above this test's own executable (`target/<profile>/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace --features enclave/mock`",
        path.display()
    );
    path
}

pub fn host_bin() -> PathBuf {
    workspace_bin("signer-host")
}

/// The enclave binary; the tests need its mock build (`--features enclave/mock`).
pub fn enclave_bin() -> PathBuf {
    workspace_bin("signer-enclave")
}

pub fn dev_bin() -> PathBuf {
    workspace_bin("signer-dev")
}

pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(command: &mut Command, log: PathBuf) -> Proc {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "process did not exit within {limit:?}; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An enclave and a host, wired over mock-vsock in a temporary directory.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub enclave: Option<Proc>,
    pub host: Proc,
    pub host_socket: PathBuf,
    pub enclave_socket: PathBuf,
}

impl Stack {
    pub async fn start() -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let enclave_socket = dir.path().join("enclave.sock");
        let host_socket = dir.path().join("host.sock");
        let enclave = start_enclave(dir.path(), &enclave_socket, 0);
        let host = spawn_host(
            dir.path(),
            "host",
            &host_socket,
            &enclave_socket,
            &dir.path().join("signer.db"),
        );
        let stack = Stack {
            dir,
            enclave: Some(enclave),
            host,
            host_socket,
            enclave_socket,
        };
        stack.wait_ready(true).await;
        stack
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("signer.db")
    }

    /// Stores keys `range` of `role` as active, straight into the database the host
    /// serves (its enclave has no KMS, so an import could never be verified): for tests
    /// of the pool, not of import.
    pub fn store_active_keys(&self, range: std::ops::Range<u32>, role: host::store::KeyRole) {
        let store = host::store::SqliteStore::open(
            &self.db_path(),
            host::store::LockLimits::default(),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let keys = active_keys(range, role);
        host::store::KeyStore::insert_keys(&store, &keys).unwrap();
    }

    pub fn restart_enclave(&mut self, generation: u32) {
        self.enclave = Some(start_enclave(
            self.dir.path(),
            &self.enclave_socket,
            generation,
        ));
    }

    /// Starts another host process on the same enclave and database.
    pub async fn second_host(&self, name: &str) -> (Proc, PathBuf) {
        let socket = self.dir.path().join(format!("{name}.sock"));
        let proc = spawn_host(
            self.dir.path(),
            name,
            &socket,
            &self.enclave_socket,
            &self.db_path(),
        );
        wait_ready_at(&socket, true, &proc).await;
        (proc, socket)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, serde_json::Value) {
        request_once(&self.host_socket, Method::GET, path, None)
            .await
            .unwrap()
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        request_once(&self.host_socket, Method::POST, path, Some(&body))
            .await
            .unwrap()
    }

    /// Polls `/readyz` until it reports `ready` (or not), for at most 20 s.
    pub async fn wait_ready(&self, ready: bool) -> serde_json::Value {
        wait_ready_at(&self.host_socket, ready, &self.host).await
    }
}

pub fn spawn_host(dir: &Path, name: &str, socket: &Path, enclave_socket: &Path, db: &Path) -> Proc {
    spawn_host_on(dir, name, socket, enclave_socket, db.as_os_str(), &[])
}

/// A host on `store` (a SQLite path or a database URL), with `extra` flags.
pub fn spawn_host_on(
    dir: &Path,
    name: &str,
    socket: &Path,
    enclave_socket: &Path,
    store: &std::ffi::OsStr,
    extra: &[&str],
) -> Proc {
    Proc::spawn(
        Command::new(host_bin())
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .arg("--enclave")
            .arg(format!("unix://{}", enclave_socket.display()))
            .arg("--store")
            .arg(store)
            .args(extra),
        dir.join(format!("{name}.log")),
    )
}

pub async fn wait_ready_at(socket: &Path, ready: bool, host: &Proc) -> serde_json::Value {
    let want = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut last = None;
    for _ in 0..400 {
        if let Ok((status, body)) = request_once(socket, Method::GET, "/readyz", None).await {
            if status == want {
                return body;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "readyz never became {want}; last {last:?}\nhost log:\n{}",
        host.log_text()
    );
}

/// A valid account public key, different for each `i`.
pub fn test_account(i: u32) -> String {
    let mut raw = [0u8; 32];
    raw[..4].copy_from_slice(&i.to_be_bytes());
    raw[31] = 0xa5;
    format!("{}", stellar_strkey::ed25519::PublicKey(raw))
}

/// Registers channel key `i` with a recognisable fake ciphertext (the host never opens
/// ciphertexts, so any bytes do for store tests).
pub fn register_body(i: u32, role: &str) -> serde_json::Value {
    use base64::Engine;
    serde_json::json!({
        "public_key": test_account(i),
        "role": role,
        "kms_key_id": "arn:aws:kms:us-east-1:111122223333:key/test",
        "ciphertext": base64::engine::general_purpose::STANDARD.encode(fake_ciphertext(i)),
    })
}

/// `clients` API clients spread over `sockets` (hosts sharing one store) acquire,
/// hold and release channel accounts `0..accounts` until `acquisitions` are done,
/// asserting that no account is ever held by two at once (an exhausted pool, 429, is
/// waited out). Returns the acquisitions through each socket.
pub async fn acquire_exclusively(
    sockets: &[PathBuf],
    accounts: u32,
    clients: usize,
    acquisitions: u64,
) -> Vec<u64> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let index: Arc<std::collections::HashMap<String, usize>> = Arc::new(
        (0..accounts)
            .map(|i| (test_account(i), i as usize))
            .collect(),
    );
    let held: Arc<Vec<AtomicBool>> =
        Arc::new((0..accounts).map(|_| AtomicBool::new(false)).collect());
    let acquired = Arc::new(AtomicU64::new(0));
    let per_socket: Arc<Vec<AtomicU64>> =
        Arc::new(sockets.iter().map(|_| AtomicU64::new(0)).collect());
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let which = client % sockets.len();
            let socket = sockets[which].clone();
            let (index, held, acquired, per_socket) = (
                index.clone(),
                held.clone(),
                acquired.clone(),
                per_socket.clone(),
            );
            tokio::spawn(async move {
                let mut conn = host::api_client::ApiConnection::connect(&socket)
                    .await
                    .unwrap();
                while acquired.load(Ordering::Relaxed) < acquisitions {
                    let (status, lease) = conn
                        .request(
                            Method::POST,
                            "/v1/channels/acquire",
                            Some(&serde_json::json!({})),
                        )
                        .await
                        .unwrap();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    assert_eq!(status, StatusCode::OK, "{lease}");
                    acquired.fetch_add(1, Ordering::Relaxed);
                    per_socket[which].fetch_add(1, Ordering::Relaxed);
                    let account = lease["account"].as_str().unwrap().to_string();
                    let slot = &held[index[&account]];
                    assert!(
                        !slot.swap(true, Ordering::SeqCst),
                        "{account} handed out twice"
                    );
                    tokio::task::yield_now().await;
                    slot.store(false, Ordering::SeqCst);
                    let release =
                        serde_json::json!({"account": account, "lock_token": lease["lock_token"]});
                    let (status, body) = conn
                        .request(Method::POST, "/v1/channels/release", Some(&release))
                        .await
                        .unwrap();
                    assert_eq!(status, StatusCode::OK, "{body}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    per_socket
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect()
}

/// Keys `range` of `role`, active, with fake ciphertexts: for tests of the pool.
pub fn active_keys(
    range: std::ops::Range<u32>,
    role: host::store::KeyRole,
) -> Vec<host::store::NewKey> {
    range
        .map(|i| host::store::NewKey {
            public_key: test_account(i),
            role,
            format: host::store::KeyFormat::KmsDirect,
            kms_key_id: "arn:aws:kms:us-east-1:111122223333:key/test".into(),
            kms_ciphertext: fake_ciphertext(i),
            sealed_seed: None,
            state: host::store::KeyState::Active,
            pending_for: None,
        })
        .collect()
}

pub fn fake_ciphertext(i: u32) -> Vec<u8> {
    (0..200u32)
        .map(|j| (i.wrapping_mul(31).wrapping_add(j)) as u8)
        .collect()
}

pub fn start_enclave(dir: &Path, socket: &Path, generation: u32) -> Proc {
    let proc = Proc::spawn(
        Command::new(enclave_bin())
            .arg("--listen")
            .arg(format!("unix://{}", socket.display())),
        dir.join(format!("enclave-{generation}.log")),
    );
    for _ in 0..500 {
        if socket.exists() {
            return proc;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("enclave did not bind; log:\n{}", proc.log_text());
}

/// `signer-dev up` as a child process: the whole local stack with mock KMS and mock
/// enclave, in a temporary directory.
pub struct Dev {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// What `dev` printed before announcing it is ready (the curl lines).
    pub banner: Vec<String>,
}

impl Dev {
    pub fn start(extra: &[&str]) -> Dev {
        Dev::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// `signer-dev up` on the state a stopped stack left in `dir` (its keys).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Dev {
        let log = dir.path().join("dev.log");
        let mut child = Command::new(dev_bin())
            .arg("up")
            .arg("--dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Keep reading stdout to the end, so no process ever writes into a closed pipe.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ctrl-C stops everything") {
                    let _ = ready_tx.send(std::mem::take(&mut banner));
                } else {
                    banner.push(line);
                }
            }
        });
        let banner = ready_rx.recv().unwrap_or_else(|_| {
            panic!(
                "dev stack did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Dev {
            child,
            dir,
            log,
            banner,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.state().join("host.sock")
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        request_once(&self.socket(), method, path, body.as_ref())
            .await
            .unwrap()
    }

    pub async fn keys(&self, role: &str) -> Vec<String> {
        let (_, body) = self
            .call(Method::GET, &format!("/v1/keys?role={role}"), None)
            .await;
        body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["public_key"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every stored key's secrets (seeds, and the data keys of `envelope` keys), read
    /// back through the mock KMS's key store: what must never appear in any log.
    pub fn seeds(&self) -> Vec<[u8; 32]> {
        let store = mock_kms::keystore::KeyStore::open(
            &self.state().join("mock-kms-state.json"),
            "us-east-1",
            "111122223333",
        )
        .unwrap();
        let db = host::store::SqliteStore::open(
            &self.state().join("signer.db"),
            host::store::LockLimits::default(),
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        let mut secrets = Vec::new();
        for key in db.list_keys(None).unwrap() {
            let mut context = BTreeMap::from([("pubkey".to_string(), key.public_key.clone())]);
            if key.sealed_seed.is_some() {
                context.insert("format".to_string(), "envelope".to_string());
            }
            let Ok((_, plain)) = store.decrypt(&key.kms_ciphertext, None, &context) else {
                continue;
            };
            // kms-direct: the seed; envelope: the data key, which opens the seed.
            secrets.push(<[u8; 32]>::try_from(plain.as_slice()).unwrap());
            if let Some(sealed) = &key.sealed_seed {
                let seed = enclave::keys::open_sealed_seed(&plain, sealed, &key.public_key)
                    .expect("a stored envelope key opens");
                secrets.push(*seed);
            }
        }
        secrets
    }

    /// The newest audit-log rows, newest first.
    pub fn audit(&self) -> Vec<host::store::AuditRow> {
        host::store::SqliteStore::open(
            &self.state().join("signer.db"),
            host::store::LockLimits::default(),
            std::time::Duration::from_secs(5),
        )
        .unwrap()
        .recent_audit(100)
        .unwrap()
    }

    /// SIGINT (as Ctrl-C), asserts a clean exit, returns the log.
    pub fn stop(self) -> String {
        self.stop_keeping_state().0
    }

    /// Like `stop`, and hands back the state directory for inspection.
    pub fn stop_keeping_state(mut self) -> (String, tempfile::TempDir) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "dev exited with {status}; log:\n{log}");
        (log, self.dir)
    }
}

/// A finished CLI run's stdout and stderr, for messages and assertions.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// No seed, in any common encoding, appears in `logs`.
pub fn assert_no_secret_in(logs: &str, seeds: &[[u8; 32]]) {
    assert!(!seeds.is_empty());
    let lower = logs.to_ascii_lowercase();
    for seed in seeds {
        let strkey = format!(
            "{}",
            stellar_strkey::ed25519::PrivateKey(*seed).as_unredacted()
        );
        for form in [
            common::stellar::envelope::hex(seed),
            strkey,
            B64.encode(seed),
            format!("{seed:?}"),
        ] {
            assert!(
                !lower.contains(&form.to_ascii_lowercase()),
                "a seed leaked into the logs as {form}"
            );
        }
    }
}
