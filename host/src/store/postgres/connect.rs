//! Where the PostgreSQL database is and how to reach it: the URL (libpq's
//! `postgres://user:password@host:port/dbname?sslmode=…` form), TLS by rustls against
//! the web PKI roots or the CA file given (AWS RDS: its regional bundle).

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

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
    /// certificate when given. TLS follows the URL's `sslmode` (`prefer` by default:
    /// TLS when the server offers it; `require` to refuse a plaintext server).
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<PostgresTarget, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|e| StoreError::BadUrl {
            reason: format!("{e}"),
        })?;
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

    pub(super) fn with_connect_timeout(mut self, wait: Duration) -> PostgresTarget {
        if self.config.get_connect_timeout().is_none() {
            self.config
                .connect_timeout(wait.max(Duration::from_secs(1)));
        }
        self
    }

    pub(crate) fn config(&self) -> &postgres::Config {
        &self.config
    }

    pub(super) fn tls(&self) -> &MakeRustlsConnect {
        &self.tls
    }

    pub(super) fn connect(&self) -> Result<postgres::Client, StoreError> {
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
