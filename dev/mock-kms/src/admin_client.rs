//! A client for the mock KMS's test-only fault route (`POST /__mock/faults`), for the
//! tools that drive a running local stack (`signer-dev bench`, fault scripts).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("mock KMS URL {url:?}: expected https://HOST:PORT")]
    Url { url: String },
    #[error("reading the mock KMS CA certificate {path}: {message}")]
    Ca { path: String, message: String },
    #[error("talking to the mock KMS at {url}: {message}")]
    Io { url: String, message: String },
    #[error("the mock KMS refused the fault update with {status}: {body}")]
    Refused { status: u16, body: String },
}

/// Applies `update` (`{"latency_ms": .., "throttle": .., "unavailable": ..,
/// "clock_skew_s": ..}`, any subset) and returns the switches now in force.
pub async fn set_faults(
    kms_url: &str,
    ca_pem: &Path,
    update: &serde_json::Value,
) -> Result<serde_json::Value, AdminError> {
    let authority = kms_url
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|rest| rest.contains(':'))
        .ok_or_else(|| AdminError::Url {
            url: kms_url.to_string(),
        })?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let io = |e: &dyn std::fmt::Display| AdminError::Io {
        url: kms_url.to_string(),
        message: e.to_string(),
    };
    let connector = tls_connector(ca_pem)?;
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| io(&e))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| io(&e))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| io(&e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| io(&e))?;
    tokio::spawn(connection);
    let request = Request::post("/__mock/faults")
        .header("host", authority)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(update.to_string())))
        .map_err(|e| io(&e))?;
    let response = sender.send_request(request).await.map_err(|e| io(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| io(&e))?
        .to_bytes();
    if !status.is_success() {
        return Err(AdminError::Refused {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|e| io(&e))
}

/// A TLS connector that trusts the mock KMS's CA (its `--ca-out` PEM) and nothing else.
pub fn tls_connector(ca_pem: &Path) -> Result<tokio_rustls::TlsConnector, AdminError> {
    let ca_error = |message: String| AdminError::Ca {
        path: ca_pem.display().to_string(),
        message,
    };
    let pem = std::fs::read(ca_pem).map_err(|e| ca_error(e.to_string()))?;
    let ca = common::attestation::document::certificate_der_from_pem(&pem)
        .map_err(|e| ca_error(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.into()).map_err(|e| ca_error(e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ca_error(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
