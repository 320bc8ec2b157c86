//! `signer-dev up`: the whole stack on one machine, in mock-vsock mode: a mock KMS
//! enforcing the shipped key-policy template, the mock enclave as a child process on a
//! Unix socket (mock NSM with development PCRs), and the host API at `DIR/host.sock`,
//! with a development key pool. For local development only.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use common::wire::transport::Endpoint;
use hyper::{Method, StatusCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use host::api_client::request_once;
use host::config::{Config, CredentialsSource};
use host::server::BoundHost;

const READY_WAIT: Duration = Duration::from_secs(30);
const CHILD_STOP_WAIT: Duration = Duration::from_secs(5);

/// The network the development enclave signs for.
pub const DEV_NETWORK: &str = "Test SDF Network ; September 2015";
/// The mock enclave's measurements, and the ones the development key policy admits.
pub const DEV_PCRS: [(u8, &str); 3] = [
    (
        0,
        "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0",
    ),
    (
        1,
        "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1",
    ),
    (
        2,
        "d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2",
    ),
];
const DEV_ROLE: &str = "arn:aws:iam::111122223333:role/signer-host";
const DEV_CHANNELS: u32 = 8;
/// The distribution account the enclave measures until the first run has generated
/// the real one (the all-zero key; nothing can sign for it).
const PLACEHOLDER_DISTRIBUTION: &str = "GAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAWHF";

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    /// Defaults to the binaries next to this executable.
    pub bin_dir: Option<PathBuf>,
    /// PCRs the mock enclave reports, when they should differ from what the policy
    /// admits (to see an attestation denial): INDEX=HEX[,INDEX=HEX...].
    pub enclave_pcrs: Option<String>,
    /// Skip the host's policy pre-check, so the enclave's own enforcement answers.
    pub no_host_policy_precheck: bool,
    /// Contracts (C...) the distribution account may authorize Soroban calls to.
    pub soroban_contracts: Vec<String>,
    /// The mock KMS key the enclave uses, by alias.
    pub kms_key_alias: String,
    /// A rotation build: the previous mock KMS key, by alias.
    pub previous_kms_key_alias: Option<String>,
    /// `section.field=value` overrides of the host's configuration.
    pub host_sets: Vec<String>,
}

/// The shipped key-policy template, rendered for the development PCRs and the mock
/// KMS key `key_arn`.
pub fn dev_policy(key_arn: &str) -> anyhow::Result<String> {
    let build = host::key_policy::Measurements {
        pcrs: DEV_PCRS.map(|(_, value)| value.to_string()),
    };
    Ok(host::key_policy::render(
        host::key_policy::TEMPLATE,
        &key_arn.parse()?,
        DEV_ROLE,
        &[build],
    )?)
}

/// The development policy for every key in `key_arns` (the mock KMS applies one policy
/// to all its keys): the enclave's statement names them all as its resource.
fn dev_policy_for(key_arns: &[&str]) -> anyhow::Result<String> {
    let first = key_arns.first().context("no KMS key")?;
    let mut policy: serde_json::Value = serde_json::from_str(&dev_policy(first)?)?;
    if let Some(statements) = policy["Statement"].as_array_mut() {
        for statement in statements {
            if statement["Resource"] == *first {
                statement["Resource"] = serde_json::json!(key_arns);
            }
        }
    }
    Ok(serde_json::to_string_pretty(&policy)?)
}

fn binary(options: &DevOptions, name: &str) -> anyhow::Result<PathBuf> {
    let dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build the local stack first: cargo build --workspace --features enclave/mock",
            path.display()
        );
    }
    Ok(path)
}

struct Children(Vec<Child>);

impl Children {
    async fn stop(&mut self) {
        // Reverse start order: the enclave before the KMS it calls.
        while let Some(mut child) = self.0.pop() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(CHILD_STOP_WAIT, child.wait())
                .await
                .is_err()
            {
                warn!("a child did not stop within {CHILD_STOP_WAIT:?}; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = options.dir.clone();
    create_private_dir(&dir)?;
    let mut children = Children(Vec::new());
    let result = run_stack(&options, &dir, &mut children, shutdown).await;
    children.stop().await;
    info!("local stack stopped");
    result
}

/// The local stack needs the mock enclave; a production build would refuse Unix sockets.
async fn refuse_production_enclave(enclave_bin: &Path) -> anyhow::Result<()> {
    let version = Command::new(enclave_bin)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("running {} --version", enclave_bin.display()))?;
    if !String::from_utf8_lossy(&version.stdout).contains("mock build") {
        bail!(
            "{} is a production build; the local stack needs the mock enclave: \
             cargo build --workspace --features enclave/mock",
            enclave_bin.display()
        );
    }
    Ok(())
}

/// Starts the mock KMS and returns its URL (it prints its address once bound).
async fn start_mock_kms(
    kms_bin: &Path,
    kms_state: &Path,
    policy: &Path,
    nsm_ca: &Path,
    kms_ca: &Path,
    children: &mut Children,
) -> anyhow::Result<String> {
    let mut kms = Command::new(kms_bin)
        .arg("--state")
        .arg(kms_state)
        .arg("--policy")
        .arg(policy)
        .arg("--nsm-ca-dir")
        .arg(nsm_ca)
        .arg("--ca-out")
        .arg(kms_ca)
        .arg("--caller-arn")
        .arg(DEV_ROLE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", kms_bin.display()))?;
    let kms_stdout = kms.stdout.take().context("mock KMS stdout")?;
    children.0.push(kms);
    let mut line = String::new();
    tokio::time::timeout(
        READY_WAIT,
        tokio::io::BufReader::new(kms_stdout).read_line(&mut line),
    )
    .await
    .context("the mock KMS did not start in time")??;
    let kms_url = line
        .trim()
        .strip_prefix("listening on ")
        .context("unexpected first line from the mock KMS")?
        .replace("127.0.0.1", "localhost");
    Ok(kms_url)
}

/// Where the mock enclave listens and what it talks to.
#[derive(Clone, Copy)]
struct EnclaveSetup<'a> {
    endpoint: &'a Endpoint,
    kms_url: &'a str,
    relay: &'a Endpoint,
    kms_ca: &'a Path,
    nsm_ca: &'a Path,
    distribution: &'a str,
    /// The mock KMS key the development keys are under: the enclave's measured key.
    kms_key_arn: &'a str,
    /// A rotation build: the previous mock KMS key.
    previous_kms_key_arn: Option<&'a str>,
}

/// Stops the running enclave (the last child started) and starts it again measuring
/// `distribution` as the distribution account.
async fn restart_enclave(
    options: &DevOptions,
    enclave_bin: &Path,
    setup: &EnclaveSetup<'_>,
    distribution: &str,
    dir: &Path,
    children: &mut Children,
) -> anyhow::Result<()> {
    let mut running = Children(children.0.pop().into_iter().collect());
    running.stop().await;
    let _ = std::fs::remove_file(dir.join("enclave.sock"));
    let setup = EnclaveSetup {
        distribution,
        ..*setup
    };
    start_enclave(options, enclave_bin, &setup, dir, children).await
}

/// Starts the mock enclave and waits until its socket exists.
async fn start_enclave(
    options: &DevOptions,
    enclave_bin: &Path,
    setup: &EnclaveSetup<'_>,
    dir: &Path,
    children: &mut Children,
) -> anyhow::Result<()> {
    let pcrs = options.enclave_pcrs.clone().unwrap_or_else(|| {
        DEV_PCRS
            .iter()
            .map(|(i, v)| format!("{i}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let enclave = Command::new(enclave_bin)
        .arg("--listen")
        .arg(setup.endpoint.to_string())
        .arg("--network-passphrase")
        .arg(DEV_NETWORK)
        .arg("--kms-key-arn")
        .arg(setup.kms_key_arn)
        .arg("--kms-endpoint")
        .arg(setup.kms_url)
        .arg("--kms-relay")
        .arg(setup.relay.to_string())
        .arg("--kms-ca-pem")
        .arg(setup.kms_ca)
        .arg("--mock-nsm-ca-dir")
        .arg(setup.nsm_ca)
        .arg("--mock-pcrs")
        .arg(&pcrs)
        .arg("--distribution-account")
        .arg(setup.distribution)
        .args(
            setup
                .previous_kms_key_arn
                .iter()
                .flat_map(|arn| ["--previous-kms-key-arn", arn]),
        )
        .args(
            options
                .soroban_contracts
                .iter()
                .flat_map(|c| ["--policy-soroban-contract", c.as_str()]),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its own process group: Ctrl-C reaches only us, and we stop the enclave after
        // the host has drained.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", enclave_bin.display()))?;
    children.0.push(enclave);
    // Let the enclave bind before the host dials, so start-up logs no needless retry.
    let enclave_socket = dir.join("enclave.sock");
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    while !enclave_socket.exists() && tokio::time::Instant::now() < deadline {
        for child in &mut children.0 {
            if let Some(status) = child.try_wait().context("checking a child process")? {
                bail!("a child process exited during start-up ({status})");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn run_stack(
    options: &DevOptions,
    dir: &Path,
    children: &mut Children,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let kms_bin = binary(options, "signer-mock-kms")?;
    let enclave_bin = binary(options, "signer-enclave")?;
    refuse_production_enclave(&enclave_bin).await?;
    let db = dir.join("signer.db");
    let kms_state = dir.join("mock-kms-state.json");
    let nsm_ca = dir.join("mock-nsm-ca");
    let kms_ca = dir.join("mock-kms-ca.pem");
    let policy = dir.join("kms-key-policy.json");
    let relay = Endpoint::Unix(dir.join("kms-relay.sock"));
    let enclave_endpoint = Endpoint::Unix(dir.join("enclave.sock"));
    let host_socket = dir.join("host.sock");

    // The KMS key first: the policy names it.
    let kms_key_arn = dev_kms_key(&kms_bin, &kms_state, &options.kms_key_alias).await?;
    let previous_kms_key_arn = match &options.previous_kms_key_alias {
        Some(alias) => Some(dev_kms_key(&kms_bin, &kms_state, alias).await?),
        None => None,
    };
    let keys: Vec<&str> = std::iter::once(kms_key_arn.as_str())
        .chain(previous_kms_key_arn.as_deref())
        .collect();
    std::fs::write(&policy, dev_policy_for(&keys)?)
        .with_context(|| format!("writing {}", policy.display()))?;

    let kms_url = start_mock_kms(&kms_bin, &kms_state, &policy, &nsm_ca, &kms_ca, children).await?;

    // The distribution account is a measured setting; on the first run there is none
    // yet, so the enclave starts with a placeholder, generates it, and is restarted
    // with it (what an operator does with a first image, README §6).
    let mut config = dev_host_config(HostPaths {
        socket: &host_socket,
        db: &db,
        enclave: &enclave_endpoint,
        relay: &relay,
        kms_url: &kms_url,
    });
    config.enclave.precheck_signing_policy = !options.no_host_policy_precheck;
    config.signing_policy.soroban_contracts = options.soroban_contracts.clone();
    let config = config.with_overrides(&options.host_sets)?;
    let stored = stored_distribution(&config).await?;
    let distribution = stored
        .clone()
        .unwrap_or_else(|| PLACEHOLDER_DISTRIBUTION.to_string());
    let enclave = EnclaveSetup {
        endpoint: &enclave_endpoint,
        kms_url: &kms_url,
        relay: &relay,
        kms_ca: &kms_ca,
        nsm_ca: &nsm_ca,
        distribution: &distribution,
        kms_key_arn: &kms_key_arn,
        previous_kms_key_arn: previous_kms_key_arn.as_deref(),
    };
    start_enclave(options, &enclave_bin, &enclave, dir, children).await?;

    let host = BoundHost::bind(config).await?;
    let serving = tokio::spawn(host.run(shutdown.clone()));

    let started = async {
        wait_until_ready(&host_socket, children).await?;
        if stored.is_none() {
            let generated = generate_keys(&host_socket, "distribution", 1).await?;
            let distribution = generated
                .first()
                .context("no distribution key generated")?
                .clone();
            restart_enclave(
                options,
                &enclave_bin,
                &enclave,
                &distribution,
                dir,
                children,
            )
            .await?;
            wait_until_ready(&host_socket, children).await?;
            generate_keys(&host_socket, "channel", DEV_CHANNELS).await?;
            info!(%distribution, channels = DEV_CHANNELS, "generated the development keys in the enclave");
            return anyhow::Ok(distribution);
        }
        anyhow::Ok(distribution.clone())
    };
    let distribution = match started.await {
        Ok(distribution) => distribution,
        Err(e) => {
            shutdown.cancel();
            let _ = serving.await;
            return Err(e);
        }
    };
    write_stack_file(dir, children, &kms_url)?;
    print_banner(dir, &host_socket, &kms_url).await;
    let enclave = EnclaveSetup {
        distribution: &distribution,
        ..enclave
    };
    supervise_enclave(
        options,
        &enclave_bin,
        &enclave,
        dir,
        children,
        &kms_url,
        &shutdown,
    )
    .await?;
    // The host drains first, so in-flight requests can still reach the enclave.
    serving.await.context("host task")?
}

/// Until shutdown, starts the enclave again whenever it exits (as an operator's
/// service manager restarts a Nitro enclave), so a crash, or a `kill -9` in a fault
/// test, is followed by recovery; `stack.json` then names the new process.
async fn supervise_enclave(
    options: &DevOptions,
    enclave_bin: &Path,
    setup: &EnclaveSetup<'_>,
    dir: &Path,
    children: &mut Children,
    kms_url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let exited = {
            let Some(enclave) = children.0.last_mut() else {
                bail!("the enclave process is not running");
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                status = enclave.wait() => status,
            }
        };
        warn!(status = ?exited, "the enclave exited; starting it again");
        // A pause, so an enclave that cannot start does not spin.
        tokio::time::sleep(Duration::from_millis(200)).await;
        restart_enclave(
            options,
            enclave_bin,
            setup,
            setup.distribution,
            dir,
            children,
        )
        .await?;
        write_stack_file(dir, children, kms_url)?;
    }
}

/// Where a development host listens, keeps its state and finds the rest of the stack.
#[derive(Clone, Copy)]
pub struct HostPaths<'a> {
    pub socket: &'a Path,
    pub db: &'a Path,
    pub enclave: &'a Endpoint,
    pub relay: &'a Endpoint,
    pub kms_url: &'a str,
}

/// The host configuration of the local stack: the mock KMS with static development
/// credentials, the development network.
pub fn dev_host_config(paths: HostPaths<'_>) -> Config {
    let mut config = Config::default();
    config.api.socket = paths.socket.to_path_buf();
    config.store.path = paths.db.to_path_buf();
    config.enclave.endpoint = paths.enclave.clone();
    config.stellar.network_passphrase = Some(DEV_NETWORK.to_string());
    config.kms.region = Some("us-east-1".to_string());
    config.kms.endpoint = Some(paths.kms_url.to_string());
    config.kms.relay_listen = paths.relay.clone();
    config.kms.credentials = CredentialsSource::Static;
    config.kms.static_access_key_id = Some("AKIDSIGNERDEV".to_string());
    config.kms.static_secret_access_key =
        Some(host::config::SecretString("signer-dev-secret".to_string()));
    config
}

/// What a running stack is made of, in `DIR/stack.json`, for tools that measure or
/// break it (`signer-dev bench`, fault scripts).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StackFile {
    /// This process: it runs the host.
    pub host_pid: u32,
    pub enclave_pid: u32,
    pub mock_kms_pid: u32,
    pub kms_url: String,
}

pub const STACK_FILE: &str = "stack.json";

/// Children are kept in start order: the mock KMS first, the enclave last.
fn write_stack_file(dir: &Path, children: &Children, kms_url: &str) -> anyhow::Result<()> {
    let pid = |child: Option<&Child>| child.and_then(Child::id).context("a child has no pid");
    let stack = StackFile {
        host_pid: std::process::id(),
        enclave_pid: pid(children.0.last())?,
        mock_kms_pid: pid(children.0.first())?,
        kms_url: kms_url.to_string(),
    };
    let path = dir.join(STACK_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&stack)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The development KMS key (created on the first run), by ARN.
async fn dev_kms_key(kms_bin: &Path, kms_state: &Path, alias: &str) -> anyhow::Result<String> {
    let output = Command::new(kms_bin)
        .arg("--state")
        .arg(kms_state)
        .arg("--create-dev-key")
        .arg("--alias")
        .arg(alias)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running signer-mock-kms --create-dev-key")?;
    if !output.status.success() {
        bail!(
            "creating the development KMS key failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    answer["kms_key_arn"]
        .as_str()
        .map(str::to_string)
        .context("signer-mock-kms printed no kms_key_arn")
}

/// The stored distribution account, if a previous run generated it, from the store
/// the host is configured with (off the async workers: store calls block).
async fn stored_distribution(config: &Config) -> anyhow::Result<Option<String>> {
    let (store, limits) = (config.store.clone(), config.channels.lock_limits());
    let stored = tokio::task::spawn_blocking(move || {
        let store = host::store::open(&store, limits)?;
        host::store::active_distribution(store.as_ref())
    })
    .await??;
    Ok(stored.map(|key| key.public_key))
}

/// Generates `count` keys of `role` in the enclave, through the host API.
async fn generate_keys(host_socket: &Path, role: &str, count: u32) -> anyhow::Result<Vec<String>> {
    let body = serde_json::json!({ "role": role, "count": count });
    let (status, answer) =
        request_once(host_socket, Method::POST, "/v1/keys/generate", Some(&body)).await?;
    if status != StatusCode::CREATED {
        bail!("generating development {role} keys: {status} {answer}");
    }
    answer["keys"]
        .as_array()
        .context("no keys in the answer")?
        .iter()
        .map(|k| {
            k["public_key"]
                .as_str()
                .map(str::to_string)
                .context("a key without public_key")
        })
        .collect()
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    Ok(())
}

async fn wait_until_ready(host_socket: &Path, children: &mut Children) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    let mut last = String::from("no answer yet");
    while tokio::time::Instant::now() < deadline {
        for child in &mut children.0 {
            if let Some(status) = child.try_wait().context("checking a child process")? {
                bail!("a child process exited during start-up ({status})");
            }
        }
        match request_once(host_socket, Method::GET, "/v1/ping", None).await {
            Ok((StatusCode::OK, body)) => {
                if body["enclave_build"] != "mock" {
                    bail!(
                        "the enclave answered as a {} build; the local stack needs the mock \
                         build: cargo build --workspace --features enclave/mock",
                        body["enclave_build"]
                    );
                }
                return Ok(());
            }
            Ok((status, body)) => last = format!("{status}: {body}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the local stack did not become ready within {READY_WAIT:?}: {last}")
}

async fn print_banner(dir: &Path, host_socket: &Path, kms_url: &str) {
    use std::io::Write;
    let socket = host_socket.display();
    let keys = request_once(host_socket, Method::GET, "/v1/keys", None)
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let mut distribution = String::from("?");
    let mut channels = 0;
    for key in keys["keys"].as_array().into_iter().flatten() {
        match key["role"].as_str() {
            Some("distribution") => {
                distribution = key["public_key"].as_str().unwrap_or("?").to_string();
            }
            Some("channel") => channels += 1,
            _ => {}
        }
    }
    // A closed stdout (the terminal went away) must not bring the stack down.
    let _ = writeln!(
        std::io::stdout(),
        "\nsigner-dev up: local stack is up (mock enclave, mock KMS; NOT for production)\n\
         \n  state dir      {dir}\n  host API       {socket}\n  mock KMS       {kms_url}\
         \n  network        {DEV_NETWORK}\n  distribution   {distribution}\
         \n  channels       {channels} accounts (generated in the enclave, envelope format)\n\
         \n  try it:\n    curl --unix-socket {socket} http://localhost/readyz\n    \
         curl --unix-socket {socket} http://localhost/v1/keys\n    \
         curl --unix-socket {socket} -XPOST http://localhost/v1/channels/acquire\n\
         \n  Ctrl-C stops everything.\n",
        dir = dir.display(),
    );
}
