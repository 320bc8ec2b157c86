//! A small HTTP/1.1 client for the host API's Unix socket, used by the CLI
//! subcommands, the benchmark and the tests.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("response is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One keep-alive HTTP connection over the API socket.
#[derive(Debug)]
pub struct ApiConnection {
    sender: SendRequest<Full<Bytes>>,
}

impl ApiConnection {
    pub async fn connect(socket: &Path) -> Result<ApiConnection, ClientError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the sender is dropped.
            let _ = connection.await;
        });
        Ok(ApiConnection { sender })
    }

    /// Sends a request; returns the status and the body parsed as JSON.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let (status, bytes) = self
            .request_raw(method, path, body.map(std::string::ToString::to_string))
            .await?;
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, json))
    }

    /// Sends a request with an arbitrary body; returns the status and the raw body.
    pub async fn request_raw(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.sender.ready().await?;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "localhost");
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

/// Opens a connection, sends one request, closes.
pub async fn request_once(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value), ClientError> {
    ApiConnection::connect(socket)
        .await?
        .request(method, path, body)
        .await
}

/// `GET path` of a route that answers text (`/metrics`): the status, the content type
/// and the body.
pub async fn get_text(
    socket: &Path,
    path: &str,
) -> Result<(StatusCode, String, String), ClientError> {
    let mut connection = ApiConnection::connect(socket).await?;
    connection.sender.ready().await?;
    let request = hyper::Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))?;
    let response = connection.sender.send_request(request).await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}
