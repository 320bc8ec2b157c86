//! All of `signer-host`'s configuration, in one place. Loaded from a TOML file
//! (`signer-host serve --config FILE`); every field has a default, unknown fields are
//! an error so a typo never silently falls back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::stellar::signing_policy::SigningPolicySettings;
use common::wire::transport::Endpoint;
use serde::{Deserialize, Serialize};

/// Where host services find the API unless configured otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/signer-host/host.sock";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: ApiConfig,
    pub enclave: EnclaveConfig,
    pub store: StoreConfig,
    pub channels: ChannelsConfig,
    pub stellar: StellarConfig,
    pub kms: KmsConfig,
    pub readiness: ReadinessConfig,
    /// The host's copy of the enclave's signing-policy settings (the same struct the
    /// enclave's flags fill; keep the values equal). The host checks first so callers
    /// get `policy_violation` without a round trip; the enclave's check is the one
    /// that counts.
    pub signing_policy: SigningPolicySettings,
}

/// What `/readyz` checks besides the enclave, the credentials and the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadinessConfig {
    /// Every this many seconds the enclave decrypts one stored key (the distribution key
    /// when there is one) and proves it with its key-check signature; ready only while
    /// the last run passed within the period. 0 (the default) turns the canary off; each
    /// run is one KMS call.
    pub canary_period_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StellarConfig {
    /// Sent with every sign request that names no network. The enclave signs only for
    /// the network in its own measured configuration and refuses any other.
    pub network_passphrase: Option<String>,
    /// A Stellar RPC endpoint (http:// or https://), for `signer-host channels ensure`
    /// to read sequences and submit creation transactions. `serve` does not use it.
    pub rpc_url: Option<String>,
}

/// Where the enclave's KMS calls go and with which credentials. The relay runs only
/// when `region` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmsConfig {
    pub region: Option<String>,
    /// Default `https://kms.REGION.amazonaws.com`; the relay forwards to this host only.
    pub endpoint: Option<String>,
    /// Where the enclave reaches the relay (the enclave dials vsock://3:PORT).
    pub relay_listen: Endpoint,
    pub credentials: CredentialsSource,
    /// Push fresh credentials to the enclave this often (and on every reconnection).
    pub credentials_refresh_secs: u64,
    /// `credentials = "static"` only: for local development against the mock KMS.
    pub static_access_key_id: Option<String>,
    pub static_secret_access_key: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialsSource {
    /// aws-config's default chain: environment, profile, instance role (IMDSv2), ...
    DefaultChain,
    /// `static_access_key_id` / `static_secret_access_key` (development only).
    Static,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            region: None,
            endpoint: None,
            relay_listen: Endpoint::Vsock {
                cid: common::wire::transport::VSOCK_CID_ANY,
                port: 8000,
            },
            credentials: CredentialsSource::DefaultChain,
            credentials_refresh_secs: 300,
            static_access_key_id: None,
            static_secret_access_key: None,
        }
    }
}

impl KmsConfig {
    pub fn endpoint_url(&self) -> Option<String> {
        let region = self.region.as_ref()?;
        Some(
            self.endpoint
                .clone()
                .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com")),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The Unix socket host services connect to.
    pub socket: PathBuf,
    /// Permission bits of the socket file, as an octal string. Connecting needs write
    /// permission, so this decides who may call the signer.
    pub socket_mode: SocketMode,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Request bodies buffered at once, over every connection, each counted from before
    /// it is read until its request is answered (at its declared length; without one, at
    /// `max_body_bytes` until read, then at its length); one uid at most half, or
    /// `max_body_bytes` if more. A body beyond waits for room until its deadline, then
    /// is answered `host_busy`.
    pub max_buffered_body_bytes: usize,
    /// Connections open at once; the next caller gets `too_many_connections` (503).
    pub max_connections: usize,
    /// Connections one user (uid) may hold; the next from that uid gets
    /// `too_many_connections` while others still find room. Unset: half of
    /// `max_connections`.
    pub max_connections_per_uid: Option<usize>,
    /// A request's headers must arrive within this, or the connection is closed; a
    /// keep-alive connection idle this long is closed too.
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this after its headers, or the answer is
    /// `request_timeout` (408) and the connection is closed.
    pub body_read_timeout_ms: u64,
    /// Owner of the socket file (a user name or a numeric uid); the host's own user
    /// when unset. Changing it needs the privilege to chown.
    #[serde(deserialize_with = "name_or_id")]
    pub socket_owner: Option<String>,
    /// Group of the socket file (a group name or a numeric gid): with `socket_mode`
    /// 0660, the group whose members may connect at all.
    #[serde(deserialize_with = "name_or_id")]
    pub socket_group: Option<String>,
    /// Who may call which routes, checked on every request with the connection's peer
    /// credentials (SO_PEERCRED), on top of the socket's permissions.
    pub callers: CallerRules,
}

/// A user or group: its name, or its numeric id written as a number or a string.
fn name_or_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrId {
        Name(String),
        Id(u32),
    }
    Ok(Option::<NameOrId>::deserialize(d)?.map(|v| match v {
        NameOrId::Name(name) => name,
        NameOrId::Id(id) => id.to_string(),
    }))
}

/// Allow-lists per group of routes (see `api::callers` for which route is in which
/// group). A group left out admits every caller that can open the socket, except key
/// administration, which by default admits only root and the user the host runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallerRules {
    /// `POST /v1/sign`, `/v1/fee-bump`, `/v1/soroban/authorize`.
    pub signing: Option<AllowList>,
    /// `POST /v1/channels/acquire`, `/release`, `/unlock`.
    pub channels: Option<AllowList>,
    /// Every `GET` but the health probes: keys, channels, ping, metrics, readiness.
    pub read_only: Option<AllowList>,
    /// Key generation, registration, verification, import, rewrap, retirement, and
    /// channel provisioning (which signs with the distribution key).
    pub key_admin: Option<AllowList>,
}

impl Default for CallerRules {
    fn default() -> Self {
        let host_user = nix::unistd::geteuid().as_raw();
        let mut uids = vec![0];
        if host_user != 0 {
            uids.push(host_user);
        }
        CallerRules {
            signing: None,
            channels: None,
            read_only: None,
            key_admin: Some(AllowList { uids, gids: vec![] }),
        }
    }
}

/// Callers admitted by user id or by (primary) group id; empty lists admit nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowList {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl AllowList {
    pub fn admits(&self, uid: Option<u32>, gid: Option<u32>) -> bool {
        uid.is_some_and(|uid| self.uids.contains(&uid))
            || gid.is_some_and(|gid| self.gids.contains(&gid))
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_API_SOCKET),
            socket_mode: SocketMode(0o660),
            shutdown_grace_ms: 10_000,
            max_body_bytes: 512 * 1024,
            max_buffered_body_bytes: 64 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_uid: None,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            socket_owner: None,
            socket_group: None,
            callers: CallerRules::default(),
        }
    }
}

impl ApiConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnclaveConfig {
    /// vsock://CID:PORT of the enclave (mock-vsock mode: unix://PATH).
    pub endpoint: Endpoint,
    /// A request the enclave has not answered by then fails with `enclave_timeout`.
    pub request_timeout_ms: u64,
    /// Reconnection backoff grows from 50 ms up to this.
    pub reconnect_max_backoff_ms: u64,
    /// Check `[signing_policy]` on the host before asking the enclave (tests turn it
    /// off to exercise the enclave's own check).
    pub precheck_signing_policy: bool,
}

impl Default for EnclaveConfig {
    fn default() -> Self {
        Self {
            // nitro-cli gives the first enclave CID 16 unless told otherwise.
            endpoint: Endpoint::Vsock {
                cid: 16,
                port: 5000,
            },
            request_timeout_ms: 30_000,
            reconnect_max_backoff_ms: 2_000,
            precheck_signing_policy: true,
        }
    }
}

impl EnclaveConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn reconnect_max_backoff(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_backoff_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite database: key ciphertexts, channel locks, audit log. Several host
    /// processes may share it (e.g. during a rolling restart); keep it on a local disk.
    /// Used unless `url` names another store.
    pub path: PathBuf,
    /// `postgres://user:password@host:port/dbname?sslmode=require` to share one store
    /// between several hosts (README "Running several hosts"); `sqlite:///path` or
    /// unset for SQLite at `path`. A password in it is never shown; the environment
    /// (`SIGNER_HOST__STORE__URL`) keeps it off the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretString>,
    /// PostgreSQL: a PEM file of the CAs that may sign the server's certificate (AWS
    /// RDS: the region's bundle) instead of the web PKI roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How long a statement waits for another writer (SQLite), or (PostgreSQL) for a
    /// connection, a pooled connection and a row another host holds, before failing.
    pub busy_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/signer-host/signer.db"),
            url: None,
            ca_file: None,
            busy_timeout_ms: 5_000,
        }
    }
}

/// Which store backend, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// The URL as given (it may hold a password).
    Postgres(SecretString),
}

impl StoreConfig {
    /// The backend `url` names, else SQLite at `path`.
    pub fn location(&self) -> Result<StoreLocation, String> {
        let Some(SecretString(url)) = &self.url else {
            return Ok(StoreLocation::Sqlite(self.path.clone()));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(SecretString(url.clone())));
        }
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => Ok(StoreLocation::Sqlite(PathBuf::from(path))),
            _ => Err(format!(
                "{:?} is neither postgres://… nor sqlite:///path",
                redact_url_password(url)
            )),
        }
    }
}

/// A database URL with its password replaced by `[REDACTED]`, for output. Everything up
/// to the last `@` after the scheme and the first `:` is hidden (the driver's
/// credentials run to the first `@`; an unencoded `@` in a password is a common slip),
/// and so is every parameter named `password`, its name percent-encoded or not. Then
/// checked against the driver's own parse: if the password it finds is still in the
/// text, raw or percent-encoded, only the scheme is shown.
pub fn redact_url_password(url: &str) -> String {
    const HIDDEN: &str = "[REDACTED]";
    let Some((scheme, rest)) = url.split_once("://").filter(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    }) else {
        // Not a URL (a libpq key=value string, a typo): any of it may be the password.
        return HIDDEN.to_string();
    };
    let (credentials, location) = match rest.rsplit_once('@') {
        Some((credentials, location)) => match credentials.split_once(':') {
            Some((user, _)) => (format!("{user}:{HIDDEN}@"), location),
            None => (format!("{credentials}@"), location),
        },
        None => (String::new(), rest),
    };
    let mut shown = format!("{scheme}://{credentials}");
    // Every `name=value` after the credentials whose name is `password`: in the query,
    // or wherever a malformed URL puts one.
    let pieces: Vec<String> = location
        .split('&')
        .map(|piece| {
            // The parameter is what follows the piece's last '?' (all of it if none).
            let parameter = piece.rsplit('?').next().unwrap_or(piece);
            let before = &piece[..piece.len() - parameter.len()];
            match parameter.split_once('=') {
                Some((name, _))
                    if percent_encoding::percent_decode_str(name)
                        .decode_utf8_lossy()
                        .eq_ignore_ascii_case("password") =>
                {
                    format!("{before}{name}={HIDDEN}")
                }
                _ => piece.to_string(),
            }
        })
        .collect();
    shown.push_str(&pieces.join("&"));
    if let Ok(config) = url.parse::<postgres::Config>()
        && let Some(password) = config.get_password().filter(|p| !p.is_empty())
    {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&shown).collect();
        let holds = |text: &[u8]| text.windows(password.len()).any(|w| w == password);
        if holds(shown.as_bytes()) || holds(&decoded) {
            return format!("{scheme}://{HIDDEN}");
        }
    }
    shown
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Lock lifetime when an acquire names none.
    pub default_lock_seconds: u64,
    /// The longest lock an acquire may ask for.
    pub max_lock_seconds: u64,
    /// Added to a signed transaction's maxTime when its channel's lock is extended.
    pub max_time_margin_seconds: u64,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            default_lock_seconds: 30,
            max_lock_seconds: 300,
            max_time_margin_seconds: 30,
        }
    }
}

impl ChannelsConfig {
    /// The lock lifetimes the store enforces.
    pub fn lock_limits(&self) -> crate::store::LockLimits {
        crate::store::LockLimits {
            default_lock: Duration::from_secs(self.default_lock_seconds),
            max_lock: Duration::from_secs(self.max_lock_seconds),
            max_time_margin: Duration::from_secs(self.max_time_margin_seconds),
        }
    }
}

/// A secret configuration value: read and written as a plain string, never shown by
/// `Debug` (configurations get logged and printed in errors).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// File permission bits written as an octal string in TOML (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Serialize for SocketMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => Ok(SocketMode(mode)),
            _ => Err(serde::de::Error::custom(format!(
                "socket_mode {text:?}: expected octal permission bits such as \"0660\""
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Only the parser's message and the position: the TOML error's own `Display`
    /// quotes the offending line, which may hold a secret (a static secret access key).
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    /// An environment variable or `--set` flag that does not fit the configuration.
    #[error("{origin}: {problem}")]
    Override { origin: String, problem: String },
    /// A configuration written for an older release.
    #[error("{path}: {hint}")]
    Renamed { path: PathBuf, hint: &'static str },
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.split(|&b| b == b'\n').count();
    (line, before.len() - line_start + 1)
}

/// Environment variables that set configuration fields: `SIGNER_HOST__SECTION__FIELD`
/// (`__` between path segments; the name upper case, the path matched lower case), e.g.
/// `SIGNER_HOST__API__SOCKET`.
pub const ENV_PREFIX: &str = "SIGNER_HOST__";

/// Fields whose values are secrets: never echoed, always read as strings.
const SECRET_FIELDS: &[&str] = &["kms.static_secret_access_key", "store.url"];

/// Where the effective configuration comes from, lowest precedence first: the file (or
/// the defaults), then `SIGNER_HOST__*` environment variables, then `--set` flags.
#[derive(Debug, Default)]
pub struct ConfigSources {
    pub file: Option<PathBuf>,
    /// `(name, value)` pairs; only those starting with [`ENV_PREFIX`] are read.
    pub env: Vec<(String, String)>,
    /// `section.field=value` overrides, in order (a later one wins).
    pub sets: Vec<String>,
}

impl ConfigSources {
    /// The file and flags given, with this process's environment.
    pub fn with_process_env(file: Option<PathBuf>, sets: Vec<String>) -> ConfigSources {
        ConfigSources {
            file,
            env: std::env::vars().collect(),
            sets,
        }
    }
}

/// A value from the environment or a flag: TOML when it parses as a TOML value (numbers,
/// booleans, arrays, quoted strings), otherwise the text itself as a string.
fn override_value(path: &str, text: &str) -> toml::Value {
    if SECRET_FIELDS.contains(&path) {
        return toml::Value::String(text.to_string());
    }
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Sets `path` (dot-separated) in `table`, creating sections on the way.
fn set_path(
    table: &mut toml::Table,
    path: &str,
    value: toml::Value,
    origin: &str,
) -> Result<(), ConfigError> {
    let bad = |problem: String| ConfigError::Override {
        origin: origin.to_string(),
        problem,
    };
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(bad(format!("{path:?} is not a section.field path")));
    }
    let (field, sections) = segments
        .split_last()
        .ok_or_else(|| bad("an empty path".to_string()))?;
    let mut current = table;
    for section in sections {
        let entry = current
            .entry((*section).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| bad(format!("{section} is a value, not a section")))?;
    }
    current.insert((*field).to_string(), value);
    Ok(())
}

impl Config {
    /// The effective configuration from its sources (see [`ConfigSources`]), validated.
    pub fn resolve(sources: &ConfigSources) -> Result<Config, ConfigError> {
        let table = match &sources.file {
            Some(path) => {
                // Parsed as a whole first, for positioned errors that never quote a line.
                Config::load_unvalidated(path)?;
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Override {
                    origin: path.display().to_string(),
                    problem: e.message().to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        Config::overlay(table, &sources.env, &sources.sets)
    }

    /// This configuration with `section.field=value` overrides applied (the local
    /// stack's `--host-set`), validated.
    pub fn with_overrides(&self, sets: &[String]) -> Result<Config, ConfigError> {
        let table = toml::Table::try_from(self).map_err(|e| ConfigError::Invalid {
            field: "(rendering)",
            problem: e.to_string(),
        })?;
        Config::overlay(table, &[], sets)
    }

    /// `table` with the `SIGNER_HOST__*` variables of `env`, then `sets`, applied;
    /// deserialized and validated.
    fn overlay(
        mut table: toml::Table,
        env: &[(String, String)],
        sets: &[String],
    ) -> Result<Config, ConfigError> {
        let mut env: Vec<&(String, String)> = env
            .iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (name, text) in env {
            let path = name[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
            set_path(&mut table, &path, override_value(&path, text), name)?;
        }
        for set in sets {
            let (path, text) = set.split_once('=').ok_or_else(|| ConfigError::Override {
                origin: "--set".to_string(),
                // Not the argument itself: it may be a secret missing its `=`.
                problem: "a flag without `=`: expected section.field=value".to_string(),
            })?;
            let path = path.trim();
            set_path(&mut table, path, override_value(path, text), "--set")?;
        }
        let secrets: Vec<String> = SECRET_FIELDS
            .iter()
            .filter_map(|path| {
                let (section, field) = path.split_once('.')?;
                Some(table.get(section)?.get(field)?.as_str()?.to_string())
            })
            .filter(|secret| !secret.is_empty())
            .collect();
        let config = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            // A type error may quote the value: never a secret one.
            let mut problem = e.message().to_string();
            for secret in &secrets {
                problem = problem.replace(secret.as_str(), "[REDACTED]");
            }
            ConfigError::Override {
                origin: "the file, SIGNER_HOST__* variables and --set flags together".into(),
                problem,
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration as TOML, secrets replaced by `[REDACTED]`.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let render = |e: toml::ser::Error| ConfigError::Invalid {
            field: "(rendering)",
            problem: e.to_string(),
        };
        let mut table = toml::Table::try_from(self).map_err(render)?;
        for path in SECRET_FIELDS {
            if let Some((section, field)) = path.split_once('.')
                && let Some(section) = table.get_mut(section).and_then(toml::Value::as_table_mut)
                && section.contains_key(field)
            {
                section.insert(
                    field.to_string(),
                    toml::Value::String("[REDACTED]".to_string()),
                );
            }
        }
        // A database URL is shown with only its password hidden.
        if let Some(SecretString(url)) = &self.store.url
            && let Some(store) = table.get_mut("store").and_then(toml::Value::as_table_mut)
        {
            store.insert(
                "url".to_string(),
                toml::Value::String(redact_url_password(url)),
            );
        }
        toml::to_string(&table).map_err(render)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::load_unvalidated(path)?;
        config.validate()?;
        Ok(config)
    }

    fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| {
            if text.lines().any(|line| line.trim() == "[policy]") {
                return ConfigError::Renamed {
                    path: path.to_path_buf(),
                    hint: "the [policy] section is now [signing_policy] (same fields), and \
                           its `precheck` is now `precheck_signing_policy` in [enclave]",
                };
            }
            let (line, column) = source
                .span()
                .map_or((0, 0), |span| line_and_column(&text, span.start));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: source.message().to_string(),
            }
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        if self.enclave.request_timeout_ms == 0 {
            return invalid("enclave.request_timeout_ms", "must be greater than 0");
        }
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes", "must be at least 1024");
        }
        // The body limit is counted in u32 permits of the body budget.
        if self.api.max_body_bytes > 1 << 30 {
            return invalid("api.max_body_bytes", "must be at most 1 GiB");
        }
        if !(self.api.max_body_bytes as u64..=1 << 40)
            .contains(&(self.api.max_buffered_body_bytes as u64))
        {
            return invalid(
                "api.max_buffered_body_bytes",
                &format!(
                    "must be api.max_body_bytes ({}) to 1 TiB, not {}",
                    self.api.max_body_bytes, self.api.max_buffered_body_bytes
                ),
            );
        }
        if self.api.max_connections == 0 {
            return invalid("api.max_connections", "must be greater than 0");
        }
        if let Some(per_uid) = self.api.max_connections_per_uid
            && !(1..=self.api.max_connections).contains(&per_uid)
        {
            return invalid(
                "api.max_connections_per_uid",
                &format!(
                    "must be 1 to api.max_connections ({}), not {per_uid}",
                    self.api.max_connections
                ),
            );
        }
        if self.api.header_read_timeout_ms == 0 {
            return invalid("api.header_read_timeout_ms", "must be greater than 0");
        }
        if self.api.body_read_timeout_ms == 0 {
            return invalid("api.body_read_timeout_ms", "must be greater than 0");
        }
        if self.api.socket.as_os_str().is_empty() {
            return invalid("api.socket", "must not be empty");
        }
        if self.store.path.as_os_str().is_empty() {
            return invalid("store.path", "must not be empty");
        }
        if let Err(problem) = self.store.location() {
            return invalid("store.url", &problem);
        }
        if let Some(url) = self.kms.endpoint_url() {
            crate::relay::RelayTarget::from_url(&url).map_err(|problem| ConfigError::Invalid {
                field: "kms.endpoint",
                problem,
            })?;
        }
        if self.kms.credentials == CredentialsSource::Static
            && (self.kms.static_access_key_id.is_none()
                || self.kms.static_secret_access_key.is_none())
        {
            return invalid(
                "kms.credentials",
                "\"static\" needs static_access_key_id and static_secret_access_key",
            );
        }
        self.signing_policy
            .signing_policy([0; 32])
            .map_err(|problem| ConfigError::Invalid {
                field: "signing_policy.soroban_contracts",
                problem,
            })?;
        if (1..10).contains(&self.readiness.canary_period_secs) {
            return invalid(
                "readiness.canary_period_secs",
                "must be 0 (off) or at least 10: each run is a KMS call",
            );
        }
        let channels = &self.channels;
        if channels.default_lock_seconds == 0 {
            return invalid("channels.default_lock_seconds", "must be greater than 0");
        }
        if channels.default_lock_seconds > channels.max_lock_seconds {
            return invalid(
                "channels.default_lock_seconds",
                "must not exceed channels.max_lock_seconds",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However the password is written, the driver would read it, and it is not shown.
    #[test]
    fn a_database_urls_password_is_never_shown() {
        let cases = [
            (
                "postgres://signer:hunter2@db:6432/signer?sslmode=require",
                "postgres://signer:[REDACTED]@db:6432/signer?sslmode=require",
            ),
            // The credentials run to the first '@', whatever they hold.
            (
                "postgres://signer:hun/ter?2:x@db/signer",
                "postgres://signer:[REDACTED]@db/signer",
            ),
            // An '@' typed unencoded: the driver reads "hun" as the password and
            // "ter2@db" as the host; all of it is hidden.
            (
                "postgres://signer:hun@ter2@db/signer",
                "postgres://signer:[REDACTED]@db/signer",
            ),
            (
                "postgresql://signer:hun%74er2@db/signer",
                "postgresql://signer:[REDACTED]@db/signer",
            ),
            (
                "postgres://db/signer?user=signer&password=hunter2&sslmode=require",
                "postgres://db/signer?user=signer&password=[REDACTED]&sslmode=require",
            ),
            (
                "postgres://db/signer?pass%77ord=hunter2",
                "postgres://db/signer?pass%77ord=[REDACTED]",
            ),
            ("postgres://signer@db/signer", "postgres://signer@db/signer"),
            ("sqlite:///var/lib/signer.db", "sqlite:///var/lib/signer.db"),
            ("host=db password=hunter2", "[REDACTED]"),
        ];
        for (url, expected) in cases {
            let shown = redact_url_password(url);
            assert_eq!(shown, expected, "{url}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("hun/ter"),
                "{shown}"
            );
            if let Ok(config) = url.parse::<postgres::Config>()
                && let Some(password) = config.get_password()
            {
                let password = String::from_utf8_lossy(password);
                assert!(!shown.contains(&*password), "{url}: {shown}");
            }
        }
        // Malformed URLs: a parameter after an '@' in the query, a '=' in the
        // database's name, a libpq key=value string holding "://".
        for odd in [
            "postgres://db/x?options=a@b&password=hunter2",
            "postgres://db/a=b?password=hunter2&sslmode=verify-full",
            "host=db password=hunter2 application_name=a://b",
        ] {
            assert!(!redact_url_password(odd).contains("hunter2"), "{odd}");
        }
        let unknown = StoreConfig {
            url: Some(SecretString("mysql://root:hunter2@db/x".to_string())),
            ..StoreConfig::default()
        };
        assert!(!unknown.location().unwrap_err().contains("hunter2"));
    }

    #[test]
    fn full_file_parses_and_defaults_fill_the_rest() {
        let config: Config = toml::from_str(
            r#"
            [api]
            socket = "/tmp/x.sock"
            socket_mode = "0600"
            [enclave]
            endpoint = "vsock://7:5005"
            "#,
        )
        .unwrap();
        assert_eq!(config.api.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(config.api.socket_mode, SocketMode(0o600));
        assert_eq!(config.api.shutdown_grace_ms, 10_000);
        assert_eq!(
            config.enclave.endpoint,
            Endpoint::Vsock { cid: 7, port: 5005 }
        );
        config.validate().unwrap();
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        assert!(toml::from_str::<Config>("[api]\nsokcet = \"/x\"").is_err());
        assert!(toml::from_str::<Config>("[api]\nsocket_mode = \"0999\"").is_err());
        assert!(toml::from_str::<Config>("[api]\nsocket_mode = \"01777\"").is_err());
        assert!(toml::from_str::<Config>("[enclave]\nendpoint = \"tcp://x\"").is_err());
        assert_invalid(
            "[channels]\ndefault_lock_seconds = 60\nmax_lock_seconds = 30",
            "channels.default_lock_seconds",
        );
        assert_invalid(
            "[enclave]\nrequest_timeout_ms = 0",
            "enclave.request_timeout_ms",
        );
        // A uid's share is 1 to the whole cap.
        for per_uid in ["0", "11"] {
            assert_invalid(
                &format!("[api]\nmax_connections = 10\nmax_connections_per_uid = {per_uid}"),
                "api.max_connections_per_uid",
            );
        }
        let whole: Config =
            toml::from_str("[api]\nmax_connections = 10\nmax_connections_per_uid = 10").unwrap();
        whole.validate().unwrap();
        // Every body must fit in the budget.
        assert_invalid(
            "[api]\nmax_body_bytes = 4096\nmax_buffered_body_bytes = 4095",
            "api.max_buffered_body_bytes",
        );
    }

    /// `text` parses, and validation names `field` as invalid.
    fn assert_invalid(text: &str, field: &str) {
        let config: Config = toml::from_str(text).unwrap();
        match config.validate() {
            Err(ConfigError::Invalid { field: named, .. }) => assert_eq!(named, field, "{text}"),
            other => panic!("{text}: expected {field} invalid, got {other:?}"),
        }
    }

    #[test]
    fn secrets_load_but_never_show_in_debug() {
        let config: Config = toml::from_str(
            "[kms]\ncredentials = \"static\"\nstatic_access_key_id = \"AKID\"\nstatic_secret_access_key = \"hunter2\"",
        )
        .unwrap();
        assert_eq!(
            config.kms.static_secret_access_key.as_ref().unwrap().0,
            "hunter2"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn a_parse_error_gives_the_position_and_never_quotes_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signer.toml");
        // The secret is well formed; the line's trailing garbage is the error.
        std::fs::write(
            &path,
            "[kms]\ncredentials = \"static\"\nstatic_secret_access_key = \"hunter2\" trailing\n",
        )
        .unwrap();
        let error = Config::load(&path).unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            matches!(error, ConfigError::Parse { line: 3, .. }),
            "{error:?}"
        );
    }

    fn sources(
        file: Option<&Path>,
        env: &[(&str, &str)],
        sets: &[&str],
    ) -> Result<Config, ConfigError> {
        Config::resolve(&ConfigSources {
            file: file.map(Path::to_path_buf),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            sets: sets.iter().map(|s| (*s).to_string()).collect(),
        })
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("signer.toml");
        std::fs::write(
            &file,
            "[api]\nsocket = \"/file.sock\"\nmax_connections = 10\nheader_read_timeout_ms = 7\n",
        )
        .unwrap();
        let env = [
            ("SIGNER_HOST__API__SOCKET", "/env.sock"),
            ("SIGNER_HOST__API__MAX_CONNECTIONS", "20"),
            ("SIGNER_HOST__API__CALLERS__SIGNING__UIDS", "[1001, 1002]"),
            ("SIGNER_HOST__API__SOCKET_GROUP", "2000"),
            // Not configuration: the client's socket, and other programs' variables.
            ("SIGNER_HOST_SOCKET", "/client.sock"),
            ("PATH", "/usr/bin"),
        ];
        let all = sources(Some(&file), &env, &["api.socket=/flag.sock"]).unwrap();
        assert_eq!(all.api.socket, PathBuf::from("/flag.sock"));
        assert_eq!(all.api.max_connections, 20);
        assert_eq!(all.api.header_read_timeout_ms, 7);
        assert_eq!(all.api.socket_group.as_deref(), Some("2000"));
        assert_eq!(
            all.api.callers.signing,
            Some(AllowList {
                uids: vec![1001, 1002],
                gids: vec![]
            })
        );
        let no_flags = sources(Some(&file), &env, &[]).unwrap();
        assert_eq!(no_flags.api.socket, PathBuf::from("/env.sock"));
        let file_only = sources(Some(&file), &[], &[]).unwrap();
        assert_eq!(file_only.api.socket, PathBuf::from("/file.sock"));
        assert_eq!(file_only.api.max_connections, 10);
        let defaults = sources(None, &[], &[]).unwrap();
        assert_eq!(defaults, Config::default());
    }

    #[test]
    fn overrides_with_typos_or_bad_values_are_errors() {
        let typo = sources(None, &[("SIGNER_HOST__API__SOKCET", "/x")], &[]).unwrap_err();
        assert!(typo.to_string().contains("sokcet"), "{typo}");
        let zero = sources(None, &[], &["enclave.request_timeout_ms=0"]).unwrap_err();
        assert!(matches!(
            zero,
            ConfigError::Invalid {
                field: "enclave.request_timeout_ms",
                ..
            }
        ));
        assert!(sources(None, &[], &["api.socket"]).is_err());
        assert!(sources(None, &[], &["api..socket=/x"]).is_err());
        assert!(sources(None, &[], &["api.socket.deeper=/x"]).is_err());
    }

    #[test]
    fn the_effective_configuration_prints_without_secrets() {
        let config = sources(
            None,
            &[("SIGNER_HOST__KMS__STATIC_SECRET_ACCESS_KEY", "1234567")],
            &[
                "kms.credentials=static",
                "kms.static_access_key_id=AKID",
                "kms.region=us-east-1",
            ],
        )
        .unwrap();
        // A numeric-looking secret is still read as the string it is.
        assert_eq!(
            config.kms.static_secret_access_key.as_ref().unwrap().0,
            "1234567"
        );
        let shown = config.to_redacted_toml().unwrap();
        assert!(!shown.contains("1234567"), "{shown}");
        assert!(shown.contains("[REDACTED]"), "{shown}");
        assert!(shown.contains("AKID"), "{shown}");
    }

    #[test]
    fn default_config_serializes_to_toml_that_loads_back() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), Config::default());
    }

    #[test]
    fn signing_policy_section_shares_the_enclaves_defaults_and_old_files_get_a_hint() {
        let config: Config = toml::from_str(
            "[signing_policy]
max_fee = 500
[enclave]
precheck_signing_policy = false",
        )
        .unwrap();
        assert_eq!(config.signing_policy.max_fee, 500);
        assert_eq!(
            config.signing_policy.max_fee_bump_fee,
            common::stellar::signing_policy::DEFAULT_MAX_FEE_BUMP_FEE
        );
        assert!(!config.enclave.precheck_signing_policy);
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.toml");
        std::fs::write(
            &old,
            "[policy]
precheck = true
",
        )
        .unwrap();
        let message = Config::load(&old).unwrap_err().to_string();
        assert!(message.contains("[signing_policy]"), "{message}");
    }
}
