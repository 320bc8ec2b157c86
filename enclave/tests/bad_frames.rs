//! The enclave binary against hostile and broken peers: every bad connection is closed
//! with a logged reason, and the enclave keeps serving everybody else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::wire::frame::{FrameCodec, decode_message, encode_message};
use common::wire::messages::{
    BuildFlavor, EnclaveMessage, Hello, HostMessage, PROTOCOL_VERSION, Request, Response,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

struct Enclave {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Enclave {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_enclave() -> Enclave {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("enclave.sock");
    let log = dir.path().join("enclave.log");
    let child = Command::new(env!("CARGO_BIN_EXE_signer-enclave"))
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        socket.exists(),
        "enclave did not start (is it a mock build? run with --features enclave/mock): {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Enclave {
        child,
        socket,
        log,
        _dir: dir,
    }
}

type Reader = FramedRead<OwnedReadHalf, FrameCodec>;
type Writer = FramedWrite<OwnedWriteHalf, FrameCodec>;

async fn open(socket: &Path) -> (Reader, Writer) {
    let (r, w) = UnixStream::connect(socket).await.unwrap().into_split();
    (
        FramedRead::new(r, FrameCodec::new()),
        FramedWrite::new(w, FrameCodec::new()),
    )
}

async fn handshake(socket: &Path) -> (Reader, Writer) {
    let (mut reader, mut writer) = open(socket).await;
    let hello = HostMessage::Hello(Hello::current("test", BuildFlavor::Production));
    writer.send(encode_message(&hello).unwrap()).await.unwrap();
    let reply = reader.next().await.unwrap().unwrap();
    match decode_message::<EnclaveMessage>(&reply).unwrap() {
        EnclaveMessage::Hello(h) => {
            assert_eq!(h.protocol_version, PROTOCOL_VERSION);
            assert_eq!(
                h.build,
                BuildFlavor::Mock,
                "tests need the mock enclave build"
            );
        }
        other => panic!("expected hello, got {other:?}"),
    }
    (reader, writer)
}

async fn ping(reader: &mut Reader, writer: &mut Writer, id: u64) {
    let request = HostMessage::Request {
        id,
        request: Request::Ping { delay_ms: 0 },
    };
    writer
        .send(encode_message(&request).unwrap())
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .expect("no answer")
        .unwrap()
        .unwrap();
    assert_eq!(
        decode_message::<EnclaveMessage>(&frame).unwrap(),
        EnclaveMessage::Response {
            id,
            response: Ok(Response::Pong {
                build: BuildFlavor::Mock
            })
        }
    );
}

/// Sends raw bytes on a fresh connection and expects the enclave to hang up.
async fn expect_hang_up(socket: &Path, bytes: &[u8], close_write: bool) {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if close_write {
        stream.shutdown().await.unwrap();
    }
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the enclave kept a bad connection open")
        .unwrap();
}

#[tokio::test]
async fn bad_frames_close_only_their_own_connection() {
    let enclave = start_enclave();
    let socket = enclave.socket.clone();
    let (mut good_reader, mut good_writer) = handshake(&socket).await;
    ping(&mut good_reader, &mut good_writer, 1).await;

    // Garbage where the hello should be: a well-formed frame that is not a hello.
    expect_hang_up(&socket, &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff], false).await;
    // An HTTP request sent to the wrong port reads as an absurd length prefix.
    expect_hang_up(&socket, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
    // A length prefix of 4 GiB, with no body behind it: refused before allocating.
    expect_hang_up(&socket, &u32::MAX.to_be_bytes(), false).await;
    // A frame cut short by the peer closing.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0u8; 10]);
    expect_hang_up(&socket, &truncated, true).await;

    // A peer from the future: refused with both versions named, then closed.
    let (mut reader, mut writer) = open(&socket).await;
    let mut future = Hello::current("test", BuildFlavor::Production);
    future.protocol_version = PROTOCOL_VERSION + 998;
    writer
        .send(encode_message(&HostMessage::Hello(future)).unwrap())
        .await
        .unwrap();
    let refusal = reader.next().await.unwrap().unwrap();
    assert_eq!(
        decode_message::<EnclaveMessage>(&refusal).unwrap(),
        EnclaveMessage::VersionMismatch {
            enclave: PROTOCOL_VERSION,
            host: PROTOCOL_VERSION + 998
        }
    );
    assert!(
        reader.next().await.is_none(),
        "connection closed after refusal"
    );

    // Garbage after a good handshake closes that connection too.
    let (mut reader, writer) = handshake(&socket).await;
    let mut raw = writer.into_inner();
    raw.write_all(&[0, 0, 0, 3, 9, 9, 9]).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .unwrap()
            .is_none()
    );

    // Through all of that, the first connection and new ones keep working.
    ping(&mut good_reader, &mut good_writer, 2).await;
    let (mut reader, mut writer) = handshake(&socket).await;
    ping(&mut reader, &mut writer, 1).await;

    let log = std::fs::read_to_string(&enclave.log).unwrap();
    for reason in [
        "first frame is not a hello",
        "frame length 4294967295 exceeds the maximum of 1048576 bytes",
        "connection closed in the middle of a frame",
        &format!(
            "protocol version mismatch: host speaks {}, enclave speaks {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 998
        ),
        "malformed message",
    ] {
        assert!(log.contains(reason), "log lacks {reason:?}:\n{log}");
    }
}

#[tokio::test]
async fn a_slow_request_does_not_hold_up_fast_ones_on_the_same_connection() {
    let enclave = start_enclave();
    let (mut reader, mut writer) = handshake(&enclave.socket).await;
    let slow = HostMessage::Request {
        id: 1,
        request: Request::Ping { delay_ms: 3_000 },
    };
    writer.send(encode_message(&slow).unwrap()).await.unwrap();
    for id in 2..=201 {
        let fast = HostMessage::Request {
            id,
            request: Request::Ping { delay_ms: 0 },
        };
        writer.feed(encode_message(&fast).unwrap()).await.unwrap();
    }
    writer.flush().await.unwrap();
    let mut order = Vec::new();
    while order.len() < 201 {
        let frame = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("answers stopped")
            .unwrap()
            .unwrap();
        match decode_message::<EnclaveMessage>(&frame).unwrap() {
            EnclaveMessage::Response { id, response } => {
                assert!(response.is_ok());
                order.push(id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every fast answer came back before the slow one, which was sent first.
    assert_eq!(order.last(), Some(&1), "slow request answered out of turn");
    let mut fast: Vec<u64> = order[..200].to_vec();
    fast.sort_unstable();
    assert_eq!(fast, (2..=201).collect::<Vec<u64>>());
}

/// A host that opens connection after connection: beyond the limit each is closed at
/// once, and the connections already open keep working; a freed slot is reusable.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_the_rest_keep_working() {
    let enclave = start_enclave();
    let mut open_ones = Vec::new();
    for _ in 0..enclave::server::MAX_CONNECTIONS {
        open_ones.push(handshake(&enclave.socket).await);
    }
    let mut extra = UnixStream::connect(&enclave.socket).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut rest))
        .await
        .expect("the enclave kept a connection beyond its limit")
        .unwrap();
    let (reader, writer) = open_ones.last_mut().unwrap();
    ping(reader, writer, 1).await;
    drop(open_ones.pop());
    // The slot frees once the enclave has seen the close.
    let mut reopened = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (mut reader, mut writer) = open(&enclave.socket).await;
        let hello = HostMessage::Hello(Hello::current("test", BuildFlavor::Production));
        if writer.send(encode_message(&hello).unwrap()).await.is_ok()
            && let Some(Ok(_)) = reader.next().await
        {
            reopened = Some((reader, writer));
            break;
        }
    }
    let (mut reader, mut writer) = reopened.expect("a freed slot is never reused");
    ping(&mut reader, &mut writer, 2).await;
    let log = std::fs::read_to_string(&enclave.log).unwrap();
    assert!(log.contains("at the connection limit"), "{log}");
}

/// A flood of slow requests: the enclave takes up to its limit and answers the rest
/// with `enclave_busy` (after its short wait for a slot), then serves again when they
/// are done.
#[tokio::test]
async fn requests_beyond_the_in_flight_limit_are_refused_as_busy() {
    use common::wire::ErrorCode;
    let enclave = start_enclave();
    let (mut reader, mut writer) = handshake(&enclave.socket).await;
    let extra = 4;
    let flood = enclave::server::MAX_IN_FLIGHT + extra;
    for id in 1..=flood as u64 {
        let request = HostMessage::Request {
            id,
            // Long enough that no slot frees while the extra ones wait for one.
            request: Request::Ping { delay_ms: 5_000 },
        };
        writer
            .send(encode_message(&request).unwrap())
            .await
            .unwrap();
    }
    let (mut pongs, mut busy) = (0, 0);
    for _ in 0..flood {
        let frame = tokio::time::timeout(Duration::from_secs(20), reader.next())
            .await
            .expect("every request is answered")
            .unwrap()
            .unwrap();
        match decode_message::<EnclaveMessage>(&frame).unwrap() {
            EnclaveMessage::Response {
                response: Ok(Response::Pong { .. }),
                ..
            } => pongs += 1,
            EnclaveMessage::Response {
                response: Err(e), ..
            } if e.code == ErrorCode::EnclaveBusy => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((pongs, busy), (enclave::server::MAX_IN_FLIGHT, extra));
    ping(&mut reader, &mut writer, 10_000).await;
}
