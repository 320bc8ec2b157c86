//! `signer-host dev`: the whole stack on one machine, in mock-vsock mode. The enclave
//! runs as a child process listening on a Unix socket; the host API listens at
//! `DIR/host.sock`. For local development only: the mock enclave build is not the
//! production enclave.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use common::transport::Endpoint;
use hyper::{Method, StatusCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::request_once;
use crate::config::Config;
use crate::server::BoundHost;

const READY_WAIT: Duration = Duration::from_secs(20);
const CHILD_STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub dir: PathBuf,
    /// Defaults to `signer-enclave` next to this executable.
    pub enclave_bin: Option<PathBuf>,
}

pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    Ok(me.with_file_name(name))
}

pub async fn run(options: DevOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = &options.dir;
    create_private_dir(dir)?;
    let enclave_socket = dir.join("enclave.sock");
    let host_socket = dir.join("host.sock");

    let enclave_bin = match &options.enclave_bin {
        Some(path) => path.clone(),
        None => sibling_binary("signer-enclave")?,
    };
    if !enclave_bin.exists() {
        bail!(
            "{} not found; build the mock enclave first: cargo build --workspace --features enclave/mock",
            enclave_bin.display()
        );
    }
    let enclave_endpoint = Endpoint::Unix(enclave_socket.clone());
    let mut enclave = spawn_enclave(&enclave_bin, &enclave_endpoint)?;
    // Let the enclave bind before the host dials, so start-up logs no needless retry.
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    while !enclave_socket.exists() && tokio::time::Instant::now() < deadline {
        if let Some(status) = enclave.try_wait().context("checking the enclave process")? {
            bail!("the enclave exited during start-up ({status})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut config = Config::default();
    config.api.socket = host_socket.clone();
    config.store.path = dir.join("signer.db");
    config.enclave.endpoint = enclave_endpoint;
    let host = BoundHost::bind(config)?;
    let serving = tokio::spawn(host.run(shutdown.clone()));

    let ready = wait_until_ready(&host_socket, &mut enclave).await;
    if let Err(e) = ready {
        shutdown.cancel();
        let _ = serving.await;
        stop_child(&mut enclave).await;
        return Err(e);
    }
    print_banner(dir, &host_socket);

    let enclave_pid = enclave.id();
    let mut enclave_exit = tokio::spawn(async move { enclave.wait().await });
    tokio::select! {
        () = shutdown.cancelled() => {}
        status = &mut enclave_exit => {
            warn!(?status, "the enclave process exited; the host keeps serving and reports not ready");
            shutdown.cancelled().await;
        }
    }
    // Stop the host first so in-flight requests can still reach the enclave.
    let served = serving.await.context("host task")?;
    if !enclave_exit.is_finished() {
        if let Some(pid) = enclave_pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(CHILD_STOP_WAIT, &mut enclave_exit)
            .await
            .is_err()
        {
            warn!("the enclave did not stop within {CHILD_STOP_WAIT:?}; killing it");
            // Dropping the child (kill_on_drop) sends SIGKILL.
            enclave_exit.abort();
        }
    }
    info!("local stack stopped");
    served
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    Ok(())
}

fn spawn_enclave(bin: &Path, endpoint: &Endpoint) -> anyhow::Result<Child> {
    let child = Command::new(bin)
        .arg("--listen")
        .arg(endpoint.to_string())
        .stdin(Stdio::null())
        // Its own process group: Ctrl-C reaches only us, and we stop the enclave after
        // the host has drained.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(child)
}

async fn wait_until_ready(host_socket: &Path, enclave: &mut Child) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    let mut last = String::from("no answer yet");
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = enclave.try_wait().context("checking the enclave process")? {
            bail!("the enclave exited during start-up ({status})");
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

async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(CHILD_STOP_WAIT, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

fn print_banner(dir: &Path, host_socket: &Path) {
    let socket = host_socket.display();
    println!(
        "\nsigner-host dev: local stack is up (mock enclave over Unix sockets; NOT for production)\n\
         \n  state dir   {dir}\n  host API    {socket}\n\
         \n  try it:\n    curl --unix-socket {socket} http://localhost/readyz\n    \
         curl --unix-socket {socket} http://localhost/v1/ping\n\
         \n  Ctrl-C stops everything.\n",
        dir = dir.display(),
    );
}
