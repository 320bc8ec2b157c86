//! Where the host and the enclave meet: AF_VSOCK on a Nitro instance, or Unix sockets
//! in mock-vsock mode (local development and tests). Both are one [`Endpoint`] type so
//! the choice is configuration, not code.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
#[cfg(feature = "unix-endpoints")]
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream};

/// `vsock://CID:PORT` or `unix://PATH` (`unix:PATH` is accepted too).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// AF_VSOCK, at context id `cid` and `port`: `vsock://CID:PORT`.
    Vsock {
        /// Context id: 3 is the parent instance; `u32::MAX` binds any.
        cid: u32,
        /// vsock port.
        port: u32,
    },
    /// A Unix socket at this path (`unix://PATH`), for mock-vsock mode. Only with the
    /// `unix-endpoints` feature, which a production enclave build never enables.
    #[cfg(feature = "unix-endpoints")]
    Unix(PathBuf),
}

/// The CID that means "any local CID" for a listener (the enclave's usual choice).
pub const VSOCK_CID_ANY: u32 = u32::MAX;

/// Why a string is not an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointParseError {
    /// Not `vsock://CID:PORT` (or, with `unix-endpoints`, `unix://PATH`); holds the input.
    #[cfg_attr(
        feature = "unix-endpoints",
        error("endpoint {0:?}: expected vsock://CID:PORT or unix://PATH")
    )]
    #[cfg_attr(
        not(feature = "unix-endpoints"),
        error("endpoint {0:?}: expected vsock://CID:PORT (this build has vsock only)")
    )]
    UnknownScheme(String),
    /// The CID or the port of a vsock endpoint is not a `u32`.
    #[error("endpoint {input:?}: {what} {value:?} is not a 32-bit unsigned number")]
    BadNumber {
        /// The whole endpoint string.
        input: String,
        /// Which part: `CID` or `port`.
        what: &'static str,
        /// The text found in that part.
        value: String,
    },
    /// A `unix:` endpoint with no path; holds the input.
    #[error("endpoint {0:?}: empty Unix socket path")]
    EmptyPath(String),
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = input.strip_prefix("vsock://") {
            let (cid, port) = rest
                .split_once(':')
                .ok_or_else(|| EndpointParseError::UnknownScheme(input.to_string()))?;
            let number = |what: &'static str, value: &str| {
                value
                    .parse::<u32>()
                    .map_err(|_| EndpointParseError::BadNumber {
                        input: input.to_string(),
                        what,
                        value: value.to_string(),
                    })
            };
            return Ok(Endpoint::Vsock {
                cid: number("CID", cid)?,
                port: number("port", port)?,
            });
        }
        parse_unix(input)
    }
}

#[cfg(feature = "unix-endpoints")]
fn parse_unix(input: &str) -> Result<Endpoint, EndpointParseError> {
    let path = input
        .strip_prefix("unix://")
        .or_else(|| input.strip_prefix("unix:"))
        .ok_or_else(|| EndpointParseError::UnknownScheme(input.to_string()))?;
    if path.is_empty() {
        return Err(EndpointParseError::EmptyPath(input.to_string()));
    }
    Ok(Endpoint::Unix(PathBuf::from(path)))
}

#[cfg(not(feature = "unix-endpoints"))]
fn parse_unix(input: &str) -> Result<Endpoint, EndpointParseError> {
    Err(EndpointParseError::UnknownScheme(input.to_string()))
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            #[cfg(feature = "unix-endpoints")]
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A connected byte stream over either transport.
#[derive(Debug)]
pub enum Stream {
    /// A vsock connection.
    Vsock(VsockStream),
    /// A Unix socket connection.
    #[cfg(feature = "unix-endpoints")]
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `endpoint`.
    pub async fn connect(endpoint: &Endpoint) -> io::Result<Stream> {
        match endpoint {
            Endpoint::Vsock { cid, port } => Ok(Stream::Vsock(
                VsockStream::connect(VsockAddr::new(*cid, *port)).await?,
            )),
            #[cfg(feature = "unix-endpoints")]
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Vsock(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "unix-endpoints")]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Vsock(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "unix-endpoints")]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Vsock(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "unix-endpoints")]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Vsock(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "unix-endpoints")]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Vsock(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "unix-endpoints")]
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Vsock(s) => s.is_write_vectored(),
            #[cfg(feature = "unix-endpoints")]
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// A listening socket over either transport.
#[derive(Debug)]
pub enum Listener {
    /// Listening on vsock.
    Vsock(VsockListener),
    /// Listening on a Unix socket, whose file is removed on drop.
    #[cfg(feature = "unix-endpoints")]
    Unix(UnixSocketListener),
}

impl Listener {
    /// Binds `endpoint`. Unix sockets get mode `unix_mode` (see [`bind_unix`]).
    pub fn bind(endpoint: &Endpoint, unix_mode: u32) -> io::Result<Listener> {
        #[cfg(not(feature = "unix-endpoints"))]
        let _ = unix_mode;
        match endpoint {
            Endpoint::Vsock { cid, port } => Ok(Listener::Vsock(VsockListener::bind(
                VsockAddr::new(*cid, *port),
            )?)),
            #[cfg(feature = "unix-endpoints")]
            Endpoint::Unix(path) => Ok(Listener::Unix(bind_unix(path, unix_mode)?)),
        }
    }

    /// Accepts one connection; the string describes the peer for logs.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Vsock(l) => {
                let (stream, addr) = l.accept().await?;
                Ok((
                    Stream::Vsock(stream),
                    format!("vsock://{}:{}", addr.cid(), addr.port()),
                ))
            }
            #[cfg(feature = "unix-endpoints")]
            Listener::Unix(l) => {
                let (stream, _) = l.listener.accept().await?;
                let peer = match stream.peer_cred() {
                    Ok(cred) => format!(
                        "unix peer pid={} uid={}",
                        cred.pid().unwrap_or_default(),
                        cred.uid()
                    ),
                    Err(_) => "unix peer".to_string(),
                };
                Ok((Stream::Unix(stream), peer))
            }
        }
    }

    /// The bound address, e.g. to learn the port chosen for a vsock listener.
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Listener::Vsock(l) => {
                let addr = l.local_addr()?;
                Ok(Endpoint::Vsock {
                    cid: addr.cid(),
                    port: addr.port(),
                })
            }
            #[cfg(feature = "unix-endpoints")]
            Listener::Unix(l) => Ok(Endpoint::Unix(l.cleanup.path.clone())),
        }
    }
}

/// A bound Unix socket whose file is removed when this value is dropped.
#[derive(Debug)]
pub struct UnixSocketListener {
    /// The bound socket.
    pub listener: UnixListener,
    /// Removes the socket file when the listener is dropped.
    pub cleanup: UnixSocketCleanup,
}

/// Removes a Unix socket file on drop, unless another process has replaced the file
/// since (a newer instance during a restart must keep its socket).
#[derive(Debug)]
pub struct UnixSocketCleanup {
    path: PathBuf,
    inode: u64,
}

impl UnixSocketCleanup {
    /// The socket file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocketCleanup {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.ino() == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a Unix socket at `path` with permission bits `mode`.
///
/// A stale socket file left by a crashed process is replaced; a socket somebody is
/// still listening on is not (`AddrInUse`). The socket is bound under a temporary name,
/// given its mode, then renamed into place, so it never appears at `path` with wider
/// permissions than asked for.
pub fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixSocketListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another process is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", path.display()),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    let inode = std::fs::symlink_metadata(path)?.ino();
    Ok(UnixSocketListener {
        listener,
        cleanup: UnixSocketCleanup {
            path: path.to_path_buf(),
            inode,
        },
    })
}

#[cfg(all(test, feature = "unix-endpoints"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn endpoints_parse_and_print() {
        assert_eq!(
            "vsock://16:5000".parse::<Endpoint>().unwrap(),
            Endpoint::Vsock {
                cid: 16,
                port: 5000
            }
        );
        assert_eq!(
            "unix:///run/signer/enclave.sock"
                .parse::<Endpoint>()
                .unwrap(),
            Endpoint::Unix("/run/signer/enclave.sock".into())
        );
        assert_eq!(
            "unix:rel/e.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("rel/e.sock".into())
        );
        let e: Endpoint = "vsock://3:7".parse().unwrap();
        assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e);
        assert!(matches!(
            "vsock://x:1".parse::<Endpoint>(),
            Err(EndpointParseError::BadNumber { what: "CID", .. })
        ));
        assert!(matches!(
            "tcp://1.2.3.4:5".parse::<Endpoint>(),
            Err(EndpointParseError::UnknownScheme(_))
        ));
        assert!(matches!(
            "unix://".parse::<Endpoint>(),
            Err(EndpointParseError::EmptyPath(_))
        ));
    }

    #[tokio::test]
    async fn unix_listener_mode_stale_file_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A stale socket left by a dead process is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let bound = bind_unix(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let endpoint = Endpoint::Unix(path.clone());
        let accept = tokio::spawn(async move {
            let (mut s, _) = bound.listener.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
            bound
        });
        let mut client = Stream::connect(&endpoint).await.unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let bound = accept.await.unwrap();
        // A socket somebody listens on is never replaced.
        let err = bind_unix(&path, 0o660).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(bound);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[tokio::test]
    async fn cleanup_leaves_a_replacement_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind_unix(&path, 0o600).unwrap();
        std::fs::remove_file(&path).unwrap();
        let second = bind_unix(&path, 0o600).unwrap();
        drop(first);
        assert!(
            path.exists(),
            "the newer socket must survive the old one's cleanup"
        );
        drop(second);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_non_socket_file_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, b"data").unwrap();
        assert_eq!(
            bind_unix(&path, 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    /// This machine has AF_VSOCK (local CID 3) but no peer: prove the real transport
    /// binds and listens, and learns its port, as the enclave's listener does.
    #[tokio::test]
    async fn vsock_listener_binds_and_listens() {
        let endpoint = Endpoint::Vsock {
            cid: VSOCK_CID_ANY,
            port: u32::MAX, // VMADDR_PORT_ANY: the kernel picks a free port
        };
        let listener = Listener::bind(&endpoint, 0).unwrap_or_else(|e| {
            panic!("binding {endpoint} failed ({e}); is the vsock kernel module loaded?")
        });
        match listener.local_endpoint().unwrap() {
            Endpoint::Vsock { port, .. } => assert_ne!(port, u32::MAX),
            other @ Endpoint::Unix(_) => panic!("expected a vsock endpoint, got {other}"),
        }
    }
}
