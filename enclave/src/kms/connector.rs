//! The SDK's HTTP client inside the enclave: hyper's pooled client with rustls (TLS
//! ends here, inside the enclave) over a stream to the host's KMS relay instead of a
//! TCP socket. The relay forwards bytes to one KMS endpoint; it cannot read or alter
//! the TLS session, and this dialer refuses any host but the configured one.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use common::wire::transport::{Endpoint, Stream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A relay stream as hyper wants it.
pub struct RelayStream(Stream);

impl tokio::io::AsyncRead for RelayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for RelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connection for RelayStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Dials the relay for every new pooled connection.
#[derive(Clone, Debug)]
pub struct RelayDialer {
    relay: Endpoint,
    host: Arc<str>,
}

impl tower_service::Service<http::Uri> for RelayDialer {
    type Response = TokioIo<RelayStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: http::Uri) -> Self::Future {
        let relay = self.relay.clone();
        let expected = self.host.clone();
        let host = destination.host().map(str::to_string);
        Box::pin(async move {
            if host.as_deref() != Some(&*expected) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("refusing to dial {host:?}: the relay serves only {expected}"),
                ));
            }
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, Stream::connect(&relay))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "relay connect timed out")
                })??;
            Ok(TokioIo::new(RelayStream(stream)))
        })
    }
}

#[derive(Clone)]
pub struct RelayHttpClient {
    client: Client<hyper_rustls::HttpsConnector<RelayDialer>, SdkBody>,
}

impl std::fmt::Debug for RelayHttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayHttpClient")
    }
}

impl RelayHttpClient {
    /// `host` is the KMS endpoint's name: SNI, certificate name and the only host dialed.
    pub fn new(
        relay: Endpoint,
        host: &str,
        roots: rustls::RootCertStore,
    ) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(RelayDialer {
                relay,
                host: host.into(),
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(64)
            .build(https);
        Ok(RelayHttpClient { client })
    }
}

impl HttpConnector for RelayHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        HttpConnectorFuture::new(async move {
            let response = response.await.map_err(classify)?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

impl HttpClient for RelayHttpClient {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// Finds an error of type `E` in a chain, looking inside `io::Error`s too (their
/// `source()` skips the payload).
fn find<'a, E: StdError + 'static>(mut error: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    loop {
        if let Some(hit) = error.downcast_ref::<E>() {
            return Some(hit);
        }
        error = match error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            Some(inner) => inner as &(dyn StdError + 'static),
            None => error.source()?,
        };
    }
}

/// TLS failures are never retried: a certificate that does not verify will not start
/// verifying, and retrying would only hide an attack or a misconfiguration.
fn classify(error: hyper_util::client::legacy::Error) -> ConnectorError {
    let tls = find::<rustls::Error>(&error).is_some();
    let timeout = find::<io::Error>(&error).is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
    let connect = error.is_connect();
    let boxed: BoxError = error.into();
    if tls {
        ConnectorError::other(boxed, None).never_connected()
    } else if timeout {
        ConnectorError::timeout(boxed)
    } else if connect {
        ConnectorError::io(boxed).never_connected()
    } else {
        ConnectorError::io(boxed)
    }
}
