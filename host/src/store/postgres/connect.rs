//! Where the PostgreSQL database is and how to reach it: the URL (libpq's
//! `postgres://user:password@host:port/dbname?sslmode=…` form), TLS by rustls against
//! the web PKI roots or the CA file given (AWS RDS: its regional bundle).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// `url` with `sslmode=verify-ca` and `sslmode=verify-full` (libpq's names for "TLS,
/// and check the certificate") spelled `require`, the only TLS mode the driver parses;
/// its TLS connector verifies the chain and the host name in every mode.
fn verifying_modes_as_require(url: &str) -> String {
    // The query starts at the first '?' after the credentials (which run to the first
    // '@', as the driver reads them, and may hold a '?').
    let after_credentials = url.find('@').map_or(0, |at| at + 1);
    let Some(query_start) = url[after_credentials..]
        .find('?')
        .map(|i| after_credentials + i)
    else {
        return url.to_string();
    };
    let (base, query) = url.split_at(query_start + 1);
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| match pair {
            "sslmode=verify-ca" | "sslmode=verify-full" => "sslmode=require",
            other => other,
        })
        .collect();
    format!("{base}{}", query.join("&"))
}

/// The TLS mode to connect with: `require` unless the database is on this machine
/// (where `disable` and `prefer` stay as given), and always with a CA file.
fn required_ssl_mode(
    config: &postgres::Config,
    has_ca_file: bool,
) -> Result<postgres::config::SslMode, StoreError> {
    use postgres::config::SslMode;
    // "localhost" is trusted as the resolver's loopback name: a host whose resolver
    // lies about it is a compromised host, which can read its own connections anyway.
    let on_this_machine = config.get_hosts().iter().all(|host| match host {
        postgres::config::Host::Tcp(name) => {
            name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        postgres::config::Host::Unix(_) => true,
    }) && config.get_hostaddrs().iter().all(IpAddr::is_loopback);
    let only_unix_sockets = config
        .get_hosts()
        .iter()
        .all(|host| matches!(host, postgres::config::Host::Unix(_)));
    match config.get_ssl_mode() {
        SslMode::Disable if has_ca_file => Err(StoreError::BadUrl {
            reason: "sslmode=disable with a CA file: the CA file is for TLS; remove one"
                .to_string(),
        }),
        SslMode::Disable if !on_this_machine => Err(StoreError::BadUrl {
            reason: "sslmode=disable would send keys, locks and audit rows in plaintext; it \
                     is accepted only for a database on this machine (a Unix socket or a \
                     loopback address)"
                .to_string(),
        }),
        // A CA file asks for TLS, except over Unix sockets, where the server has none.
        SslMode::Prefer if (has_ca_file && !only_unix_sockets) || !on_this_machine => {
            Ok(SslMode::Require)
        }
        mode => Ok(mode),
    }
}

/// Whether libpq-style `options` (`-c name=value`, `-cname=value`, `--name=value`) set
/// `lock_timeout` (and not merely a name ending in it, such as `deadlock_timeout`).
fn sets_lock_timeout(options: &str) -> bool {
    options.split_whitespace().any(|word| {
        let setting = word
            .strip_prefix("--")
            .or_else(|| word.strip_prefix("-c"))
            .unwrap_or(word);
        setting.starts_with("lock_timeout=") || setting.starts_with("lock-timeout=")
    })
}

/// A parsed database URL and the TLS settings to reach it.
#[derive(Clone)]
pub struct PostgresTarget {
    config: postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PostgresTarget {
    /// Parses `url`; `ca_file` (PEM) replaces the web PKI roots for the server's
    /// certificate when given. TLS is required, and the server's certificate and name
    /// verified, for every database not on this machine: `sslmode=prefer` (libpq's
    /// default, which falls back to plaintext when a man in the middle says the server
    /// has no TLS) is read as `require`, `verify-ca` and `verify-full` are `require`
    /// (rustls always verifies both), and `sslmode=disable` is refused unless every host
    /// is a Unix socket or a loopback address.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<PostgresTarget, StoreError> {
        let mut config: postgres::Config =
            verifying_modes_as_require(url)
                .parse()
                .map_err(|e| StoreError::BadUrl {
                    reason: format!("{e}"),
                })?;
        config.ssl_mode(required_ssl_mode(&config, ca_file.is_some())?);
        // Every connection commits durably, whatever the server's default: an answered
        // lock change or audit row survives a database crash.
        let options = match config.get_options() {
            Some(given) => format!("{given} -c synchronous_commit=on"),
            None => "-c synchronous_commit=on".to_string(),
        };
        config.options(&options);
        config.application_name("signer-host");
        let roots = match ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certificates = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| StoreError::BadUrl {
                        reason: format!("CA file {}: {e}", path.display()),
                    })?;
                let (added, _) = roots.add_parsable_certificates(certificates);
                if added == 0 {
                    return Err(StoreError::BadUrl {
                        reason: format!("CA file {}: no certificate in it", path.display()),
                    });
                }
                roots
            }
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::BadUrl {
                reason: format!("TLS: {e}"),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(PostgresTarget {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// Bounds every wait on the database by `wait` (the store's busy timeout): the TCP
    /// connect (unless the URL sets `connect_timeout`), and a statement waiting for a
    /// row another host holds (`lock_timeout`, as SQLite's busy timeout, unless the
    /// URL's `options` set one). TCP keepalives are always on, with `tcp_user_timeout`:
    /// a server that vanishes without closing the connection (a network partition) is
    /// found within about half a minute, so the writer fails its batch and reconnects
    /// instead of waiting forever.
    pub(super) fn with_timeouts(mut self, wait: Duration) -> PostgresTarget {
        let wait = wait.max(Duration::from_secs(1));
        if self.config.get_connect_timeout().is_none() {
            self.config.connect_timeout(wait);
        }
        let options = self.config.get_options().unwrap_or_default().to_string();
        if !sets_lock_timeout(&options) {
            // The server takes at most i32::MAX milliseconds.
            let millis = wait.as_millis().min(i32::MAX as u128);
            let options = format!("{options} -c lock_timeout={millis}");
            self.config.options(options.trim_start());
        }
        self.config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        self
    }

    pub(crate) fn config(&self) -> &postgres::Config {
        &self.config
    }

    pub(super) fn tls(&self) -> &MakeRustlsConnect {
        &self.tls
    }

    pub fn connect(&self) -> Result<postgres::Client, StoreError> {
        self.config
            .connect(self.tls.clone())
            .map_err(|source| StoreError::Connect {
                database: self.describe(),
                source,
            })
    }

    /// `user@host:port/dbname`, never the password: for logs, errors and `/readyz`.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(
                self.config
                    .get_ports()
                    .iter()
                    .chain(std::iter::repeat(&5432)),
            )
            .map(|(host, port)| match host {
                // An '@' in a host name is a password's '@' typed unencoded.
                postgres::config::Host::Tcp(name) if name.contains('@') => {
                    format!("[REDACTED]:{port}")
                }
                postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
            })
            .collect();
        format!(
            "{}@{}/{}",
            self.config.get_user().unwrap_or("?"),
            hosts.join(","),
            self.config.get_dbname().unwrap_or("?")
        )
    }
}
