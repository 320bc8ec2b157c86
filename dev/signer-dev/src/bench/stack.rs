//! The local stack under measurement: `signer-dev up` as a child process (it runs the
//! host in-process and starts the mock KMS and the enclave), and what `/proc` says
//! about its processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use host::api_client::request_once;

use crate::up::{STACK_FILE, StackFile};

/// How the enclave treats decrypted keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// The default: every signature is a KMS call.
    PerCall,
    /// The opt-in enclave key cache (`SIGNER_KEY_CACHE_TTL_SECS`).
    Cached,
}

pub struct Stack {
    child: tokio::process::Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub processes: StackFile,
    /// The channel accounts among the development keys.
    pub channels: Vec<String>,
}

const START_WAIT: Duration = Duration::from_mins(1);

impl Stack {
    /// Starts `signer-dev up` in `dir` (keys persist there between starts), logging
    /// with `log_filter` as its `SIGNER_LOG`.
    pub async fn start(dir: &Path, mode: KeyMode, log_filter: &str) -> anyhow::Result<Stack> {
        let me = std::env::current_exe().context("locating this executable")?;
        let _ = std::fs::remove_file(dir.join(STACK_FILE));
        let log_path = dir.with_extension("log");
        let log = std::fs::File::create(&log_path).context("creating the stack's log")?;
        let mut command = tokio::process::Command::new(me);
        command
            .arg("up")
            .arg("--dir")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .env("SIGNER_LOG", log_filter)
            .kill_on_drop(true);
        match mode {
            KeyMode::PerCall => command.env_remove("SIGNER_KEY_CACHE_TTL_SECS"),
            KeyMode::Cached => command.env("SIGNER_KEY_CACHE_TTL_SECS", "300"),
        };
        let child = command.spawn().context("starting signer-dev up")?;
        let socket = dir.join("host.sock");
        let deadline = Instant::now() + START_WAIT;
        while Instant::now() < deadline {
            let ready = matches!(
                request_once(&socket, Method::GET, "/readyz", None).await,
                Ok((StatusCode::OK, _))
            );
            if ready && let Ok(text) = std::fs::read(dir.join(STACK_FILE)) {
                let processes = serde_json::from_slice(&text).context("reading stack.json")?;
                let channels = channel_keys(&socket).await?;
                anyhow::ensure!(!channels.is_empty(), "the local stack has no channel keys");
                return Ok(Stack {
                    child,
                    dir: dir.to_path_buf(),
                    socket,
                    processes,
                    channels,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "signer-dev up did not become ready; its log: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }

    /// Delays every mock KMS answer by `ms` milliseconds (0 removes the delay).
    pub async fn set_kms_latency(&self, ms: u64) -> anyhow::Result<()> {
        let ca = self.dir.join("mock-kms-ca.pem");
        mock_kms::admin_client::set_faults(
            &self.processes.kms_url,
            &ca,
            &serde_json::json!({ "latency_ms": ms }),
        )
        .await?;
        Ok(())
    }
}

/// The channel accounts among the keys of the host at `socket`.
async fn channel_keys(socket: &Path) -> anyhow::Result<Vec<String>> {
    let (status, keys) = request_once(socket, Method::GET, "/v1/keys?role=channel", None).await?;
    if status != StatusCode::OK {
        bail!("listing channel keys: {status} {keys}");
    }
    Ok(keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["public_key"].as_str().map(str::to_string))
        .collect())
}

/// CPU time (user and system) a process has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are space separated, and
    // utime and stime are the 12th and 13th of them (fields 14 and 15 of proc(5)).
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100);
    Ok(Duration::from_secs_f64(total as f64 / per_second as f64))
}

/// Peak resident set size (`VmHWM`) of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no VmHWM"))?;
    Ok(kib / 1024.0)
}
