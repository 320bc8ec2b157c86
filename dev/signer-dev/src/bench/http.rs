//! The benchmark's HTTP/1.1 client: one keep-alive connection over the API socket,
//! read and written by the task that uses it. hyper's client drives each connection
//! from a task of its own and hands every request and answer across a channel, two
//! task wake-ups per round trip on the cores the stack under measurement shares; this
//! one costs about what the bare round trip's echo client does, so the figures are the
//! stack's rather than the load generator's. The CLI and the tests use
//! `host::api_client`, which speaks all of HTTP/1.1; this reads only what the host
//! sends (answers with a `content-length`) and refuses anything else.

use std::path::Path;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// An answer's head larger than this is refused (the host's are a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;
/// An answer's body larger than this is refused (the largest, a signed envelope, is a
/// few KiB).
const MAX_BODY: usize = 1 << 20;
const MAX_HEADERS: usize = 32;

/// One keep-alive connection; one request at a time.
pub struct HttpConnection {
    stream: UnixStream,
    request: Vec<u8>,
    /// The answer being read: head, then body.
    received: Vec<u8>,
}

impl HttpConnection {
    pub async fn connect(socket: &Path) -> anyhow::Result<HttpConnection> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(HttpConnection {
            stream,
            request: Vec::with_capacity(1024),
            received: Vec::with_capacity(4096),
        })
    }

    /// Sends `method path` with `body` as JSON and reads the answer: its status and body.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, &[u8])> {
        self.request.clear();
        for part in [method, " ", path, " HTTP/1.1\r\nhost: localhost\r\n"] {
            self.request.extend_from_slice(part.as_bytes());
        }
        if let Some(body) = body {
            let length = body.len().to_string();
            for part in [
                "content-type: application/json\r\ncontent-length: ",
                &length,
                "\r\n\r\n",
                body,
            ] {
                self.request.extend_from_slice(part.as_bytes());
            }
        } else {
            self.request.extend_from_slice(b"\r\n");
        }
        self.stream
            .write_all(&self.request)
            .await
            .context("sending the request")?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> anyhow::Result<(u16, &[u8])> {
        self.received.clear();
        let (status, head_length, body_length) = loop {
            self.read_more().await?;
            if let Some(head) = parse_head(&self.received)? {
                break head;
            }
            if self.received.len() > MAX_HEAD {
                bail!("the answer's head is over {MAX_HEAD} bytes");
            }
        };
        let end = head_length + body_length;
        while self.received.len() < end {
            self.read_more().await?;
        }
        if self.received.len() > end {
            // One request at a time: nothing may follow the answer.
            bail!(
                "{} bytes arrived after an answer of {end}",
                self.received.len() - end
            );
        }
        Ok((status, &self.received[head_length..end]))
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        self.received.reserve(4096);
        let read = self
            .stream
            .read_buf(&mut self.received)
            .await
            .context("reading the answer")?;
        if read == 0 {
            bail!(
                "the host closed the connection after {} bytes of an answer",
                self.received.len()
            );
        }
        Ok(())
    }
}

/// The status, the head's length and the body's length of the answer at the start of
/// `received`, or `None` while its head is incomplete.
fn parse_head(received: &[u8]) -> anyhow::Result<Option<(u16, usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let head_length = match answer
        .parse(received)
        .context("parsing the answer's head")?
    {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial => return Ok(None),
    };
    let status = answer.code.unwrap_or_default();
    if status < 200 {
        // Never asked for (no `expect`), and the answer would follow it.
        bail!("an interim answer {status}");
    }
    let mut body_length = None;
    for header in answer.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("the answer has a transfer-encoding; only content-length is read");
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .with_context(|| {
                    format!(
                        "content-length {:?} is not a number",
                        String::from_utf8_lossy(header.value)
                    )
                })?;
            if body_length.is_some_and(|seen| seen != length) {
                bail!("two different content-lengths");
            }
            body_length = Some(length);
        }
    }
    let body_length = match (body_length, status) {
        (Some(length), _) if length > MAX_BODY => {
            bail!("an answer of {length} bytes, over {MAX_BODY}")
        }
        (Some(length), _) => length,
        // The statuses that never have a body.
        (None, 204 | 304) => 0,
        (None, _) => bail!("answer {status} has no content-length"),
    };
    Ok(Some((status, head_length, body_length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

    /// A connection whose other end is returned for the test to play the host.
    fn connected() -> (HttpConnection, UnixStream) {
        let (client, host) = UnixStream::pair().unwrap();
        let connection = HttpConnection {
            stream: client,
            request: Vec::new(),
            received: Vec::new(),
        };
        (connection, host)
    }

    /// Reads one request of `length` bytes, then writes `chunks` one by one, each in a
    /// read of its own.
    async fn host_answers(host: &mut UnixStream, length: usize, chunks: Vec<Vec<u8>>) -> Vec<u8> {
        let mut request = vec![0; length];
        host.read_exact(&mut request).await.unwrap();
        for chunk in chunks {
            host.write_all(&chunk).await.unwrap();
            host.flush().await.unwrap();
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        request
    }

    #[tokio::test]
    async fn requests_are_well_formed_http() {
        let body = r#"{"a":1}"#;
        let expected = format!(
            "POST /v1/sign HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: 7\r\n\r\n{body}"
        );
        let (mut connection, mut host) = connected();
        let length = expected.len();
        let host =
            tokio::spawn(
                async move { host_answers(&mut host, length, vec![ANSWER.to_vec()]).await },
            );
        let (status, answer) = connection
            .call("POST", "/v1/sign", Some(body))
            .await
            .unwrap();
        assert_eq!((status, answer), (200, &b"{\"ok\":true}"[..]));
        assert_eq!(String::from_utf8(host.await.unwrap()).unwrap(), expected);

        let expected = "GET /v1/ping HTTP/1.1\r\nhost: localhost\r\n\r\n";
        let (mut connection, mut host) = connected();
        let length = expected.len();
        let host =
            tokio::spawn(
                async move { host_answers(&mut host, length, vec![ANSWER.to_vec()]).await },
            );
        connection.call("GET", "/v1/ping", None).await.unwrap();
        assert_eq!(String::from_utf8(host.await.unwrap()).unwrap(), expected);
    }

    /// The host's answer may arrive in any number of reads; each split is read whole,
    /// and the connection then carries the next request.
    #[tokio::test]
    async fn an_answer_split_anywhere_is_read_whole() {
        let request = "GET /v1/ping HTTP/1.1\r\nhost: localhost\r\n\r\n".len();
        for split in 1..ANSWER.len() {
            let (mut connection, mut host) = connected();
            let chunks = vec![ANSWER[..split].to_vec(), ANSWER[split..].to_vec()];
            let host = tokio::spawn(async move { host_answers(&mut host, request, chunks).await });
            let (status, body) = connection.call("GET", "/v1/ping", None).await.unwrap();
            assert_eq!(
                (status, body),
                (200, &b"{\"ok\":true}"[..]),
                "split at {split}"
            );
            let host = host.await.unwrap();
            assert_eq!(host.len(), request);
        }
        // Byte by byte, twice over one connection.
        let (mut connection, mut host) = connected();
        let host = tokio::spawn(async move {
            for _ in 0..2 {
                let one_byte_each = ANSWER.iter().map(|b| vec![*b]).collect();
                host_answers(&mut host, request, one_byte_each).await;
            }
        });
        for _ in 0..2 {
            let (status, body) = connection.call("GET", "/v1/ping", None).await.unwrap();
            assert_eq!((status, body), (200, &b"{\"ok\":true}"[..]));
        }
        host.await.unwrap();
    }

    /// What the client cannot read as one answer to one request is an error, never a
    /// success counted by the benchmark.
    #[tokio::test]
    async fn answers_it_cannot_read_whole_are_errors() {
        let request = "GET /v1/ping HTTP/1.1\r\nhost: localhost\r\n\r\n".len();
        let cases: [(&str, Vec<u8>); 7] = [
            (
                "transfer-encoding",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            ("no content-length", b"HTTP/1.1 200 OK\r\n\r\n{}".to_vec()),
            (
                "content-length",
                b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n{}".to_vec(),
            ),
            (
                "two different",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}".to_vec(),
            ),
            ("after an answer", [ANSWER, b"HTTP/1.1"].concat()),
            ("closed the connection", ANSWER[..ANSWER.len() - 1].to_vec()),
            ("interim", b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        ];
        for (expected, answer) in cases {
            let (mut connection, host) = connected();
            let host = tokio::spawn(async move {
                let mut host = host;
                let mut buf = vec![0; request];
                host.read_exact(&mut buf).await.unwrap();
                host.write_all(&answer).await.unwrap();
                // Closing tells a truncated answer apart from a slow one.
                drop(host);
            });
            let error = connection
                .call("GET", "/v1/ping", None)
                .await
                .map(|(status, body)| (status, body.to_vec()))
                .expect_err(expected);
            host.await.unwrap();
            let text = format!("{error:#}");
            assert!(text.contains(expected), "{expected}: {text}");
        }
    }

    #[tokio::test]
    async fn an_endless_head_is_refused() {
        let (mut connection, mut host) = connected();
        let writer = tokio::spawn(async move {
            let head = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD * 2));
            let _ = host.write_all(head.as_bytes()).await;
            host
        });
        let error = connection.call("GET", "/v1/ping", None).await.err();
        let text = format!("{:#}", error.expect("an endless head is an error"));
        assert!(text.contains("head is over"), "{text}");
        // The host's write ends once nobody reads.
        drop(connection);
        drop(writer.await);
    }
}
