//! The version exchange that opens every host↔enclave connection, written once for
//! both sides.
//!
//! The host sends [`HostMessage::Hello`]; the enclave answers [`EnclaveMessage::Hello`]
//! or, when the versions differ, [`EnclaveMessage::VersionMismatch`] naming both, and
//! closes. Each side reads the other's version with [`peek_hello_version`] before
//! decoding anything else, so builds of different protocol versions always learn why
//! they cannot talk instead of failing on an undecodable frame.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::wire::error::ErrorCode;
use crate::wire::frame::{FrameCodec, FrameError, decode_message, encode_message};
use crate::wire::messages::{
    EnclaveMessage, Hello, HostMessage, PROTOCOL_VERSION, peek_hello_version,
};

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer sent nothing within the handshake timeout.
    #[error("no hello within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before its hello.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The first frame was something other than a hello.
    #[error("first frame is not a hello: {0}")]
    NotHello(String),
    /// The two sides speak different protocol versions.
    #[error(
        "protocol version mismatch: host speaks {host}, enclave speaks {enclave}; deploy \
         matching host and enclave builds"
    )]
    VersionMismatch {
        /// The host's protocol version.
        host: u32,
        /// The enclave's protocol version.
        enclave: u32,
    },
    /// A frame could not be read, written or decoded.
    #[error("handshake: {0}")]
    Frame(#[from] FrameError),
}

impl HandshakeError {
    /// The code a request answers with when its connection could not be opened.
    pub fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::VersionMismatch { .. } => ErrorCode::ProtocolMismatch,
            _ => ErrorCode::EnclaveUnavailable,
        }
    }
}

async fn first_frame<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, FrameCodec>,
    timeout: Duration,
) -> Result<bytes::BytesMut, HandshakeError> {
    match tokio::time::timeout(timeout, reader.next()).await {
        Err(_) => Err(HandshakeError::Timeout(timeout)),
        Ok(None) => Err(HandshakeError::Closed),
        Ok(Some(frame)) => Ok(frame?),
    }
}

/// The host's side: sends `ours`, returns the enclave's hello.
pub async fn offer<R, W>(
    reader: &mut FramedRead<R, FrameCodec>,
    writer: &mut FramedWrite<W, FrameCodec>,
    ours: Hello,
    timeout: Duration,
) -> Result<Hello, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    writer
        .send(encode_message(&HostMessage::Hello(ours))?)
        .await?;
    let frame = first_frame(reader, timeout).await?;
    if let Some(enclave) = peek_hello_version(&frame)
        && enclave != PROTOCOL_VERSION
    {
        return Err(HandshakeError::VersionMismatch {
            host: PROTOCOL_VERSION,
            enclave,
        });
    }
    match decode_message::<EnclaveMessage>(&frame)? {
        EnclaveMessage::Hello(theirs) => Ok(theirs),
        // Both versions as the enclave saw them.
        EnclaveMessage::VersionMismatch { enclave, host } => {
            Err(HandshakeError::VersionMismatch { host, enclave })
        }
        other @ EnclaveMessage::Response { .. } => {
            Err(HandshakeError::NotHello(format!("{other:?}")))
        }
    }
}

/// The enclave's side: waits for the host's hello and answers with `ours`, or with a
/// [`EnclaveMessage::VersionMismatch`] (best effort) before failing.
pub async fn answer<R, W>(
    reader: &mut FramedRead<R, FrameCodec>,
    writer: &mut FramedWrite<W, FrameCodec>,
    ours: Hello,
    timeout: Duration,
) -> Result<Hello, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let frame = first_frame(reader, timeout).await?;
    let host = peek_hello_version(&frame)
        .ok_or_else(|| HandshakeError::NotHello("not a message of any protocol version".into()))?;
    if host != PROTOCOL_VERSION {
        let refusal = EnclaveMessage::VersionMismatch {
            enclave: PROTOCOL_VERSION,
            host,
        };
        // Best effort: the host learns both versions, then we close either way.
        let _ = writer.send(encode_message(&refusal)?).await;
        return Err(HandshakeError::VersionMismatch {
            host,
            enclave: PROTOCOL_VERSION,
        });
    }
    let HostMessage::Hello(theirs) = decode_message::<HostMessage>(&frame)? else {
        return Err(HandshakeError::NotHello("a request".into()));
    };
    writer
        .send(encode_message(&EnclaveMessage::Hello(ours))?)
        .await?;
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::BuildFlavor;

    type Side = (
        FramedRead<tokio::io::ReadHalf<tokio::io::DuplexStream>, FrameCodec>,
        FramedWrite<tokio::io::WriteHalf<tokio::io::DuplexStream>, FrameCodec>,
    );

    fn pair() -> (Side, Side) {
        let (a, b) = tokio::io::duplex(4096);
        let split = |s| {
            let (r, w) = tokio::io::split(s);
            (
                FramedRead::new(r, FrameCodec::new()),
                FramedWrite::new(w, FrameCodec::new()),
            )
        };
        (split(a), split(b))
    }

    #[tokio::test]
    async fn both_sides_learn_each_others_build() {
        let ((mut hr, mut hw), (mut er, mut ew)) = pair();
        let timeout = Duration::from_secs(5);
        let host = Hello::current("signer-host", BuildFlavor::Production);
        let enclave = Hello::current("signer-enclave", BuildFlavor::Mock);
        let (from_enclave, from_host) = tokio::join!(
            offer(&mut hr, &mut hw, host.clone(), timeout),
            answer(&mut er, &mut ew, enclave.clone(), timeout)
        );
        assert_eq!(from_enclave.unwrap(), enclave);
        assert_eq!(from_host.unwrap(), host);
        assert!(host.software_version.starts_with("signer-host "));
    }

    #[tokio::test]
    async fn a_different_version_is_a_protocol_mismatch_on_both_sides() {
        let ((mut hr, mut hw), (mut er, mut ew)) = pair();
        let timeout = Duration::from_secs(5);
        let mut old = Hello::current("signer-host", BuildFlavor::Production);
        old.protocol_version = PROTOCOL_VERSION + 7;
        let enclave = Hello::current("signer-enclave", BuildFlavor::Mock);
        let (host_side, enclave_side) = tokio::join!(
            offer(&mut hr, &mut hw, old, timeout),
            answer(&mut er, &mut ew, enclave, timeout)
        );
        let host_side = host_side.unwrap_err();
        assert!(
            matches!(
                host_side,
                HandshakeError::VersionMismatch { host, enclave }
                    if host == PROTOCOL_VERSION + 7 && enclave == PROTOCOL_VERSION
            ),
            "{host_side:?}"
        );
        assert_eq!(host_side.code(), ErrorCode::ProtocolMismatch);
        assert!(matches!(
            enclave_side.unwrap_err(),
            HandshakeError::VersionMismatch { .. }
        ));
    }

    #[tokio::test]
    async fn silence_times_out() {
        let ((_hr, _hw), (mut er, mut ew)) = pair();
        let hello = Hello::current("signer-enclave", BuildFlavor::Mock);
        let err = answer(&mut er, &mut ew, hello, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err:?}");
        assert_eq!(err.code(), ErrorCode::EnclaveUnavailable);
    }
}
