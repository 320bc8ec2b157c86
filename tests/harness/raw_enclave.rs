//! A connection straight to the enclave's socket, with no host in between: what a
//! compromised host can send. It speaks the wire protocol with the project's own frame
//! codec (the format under test is the enclave's input, not this client's).

use std::path::Path;
use std::time::Duration;

use common::wire::frame::{FrameCodec, decode_message, encode_message};
use common::wire::hello::offer;
use common::wire::messages::{
    BuildFlavor, EnclaveMessage, Hello, HostMessage, KeyMaterial, Request, Response,
};
use common::wire::{ErrorCode, WireError};
use futures_util::{SinkExt, StreamExt};
use host::store::KeyStore;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

const ANSWER_WITHIN: Duration = Duration::from_secs(20);

pub struct RawEnclave {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    next_id: u64,
}

impl RawEnclave {
    /// Connects and completes the hello, as any host would.
    pub async fn connect(socket: &Path) -> RawEnclave {
        let (read, write) = UnixStream::connect(socket).await.unwrap().into_split();
        let mut reader = FramedRead::new(read, FrameCodec::new());
        let mut writer = FramedWrite::new(write, FrameCodec::new());
        offer(
            &mut reader,
            &mut writer,
            Hello::current("hostile-host", BuildFlavor::Production),
            ANSWER_WITHIN,
        )
        .await
        .unwrap();
        RawEnclave {
            reader,
            writer,
            next_id: 1,
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, request: Request) -> Result<Response, WireError> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer
            .send(encode_message(&HostMessage::Request { id, request }).unwrap())
            .await
            .unwrap();
        let frame = tokio::time::timeout(ANSWER_WITHIN, self.reader.next())
            .await
            .expect("the enclave answers within its timeout")
            .expect("the enclave keeps the connection open")
            .unwrap();
        match decode_message::<EnclaveMessage>(&frame).unwrap() {
            EnclaveMessage::Response {
                id: answered,
                response,
            } => {
                assert_eq!(answered, id, "one request in flight at a time");
                response
            }
            other => panic!("not a response: {other:?}"),
        }
    }

    /// Asks for signatures on raw envelope XDR, for `network`, with `signers`.
    pub async fn sign(
        &mut self,
        network: &str,
        transaction: Vec<u8>,
        signers: Vec<KeyMaterial>,
    ) -> Result<Response, WireError> {
        self.request(Request::Sign {
            network_passphrase: network.to_string(),
            transaction,
            signers,
        })
        .await
    }
}

/// The stored key material of `public_key` in the host's database at `db`: what a
/// compromised host holds and may send in any combination.
pub fn stored_material(db: &Path, public_key: &str) -> KeyMaterial {
    let store = host::store::SqliteStore::open(
        db,
        host::store::LockLimits::default(),
        Duration::from_secs(5),
    )
    .unwrap();
    store
        .key(public_key)
        .unwrap()
        .map_or_else(|| panic!("{public_key} is not stored"), KeyMaterial::from)
}

/// The code and message of a refusal, or a panic if `answer` was not refused.
pub fn refusal(answer: Result<Response, WireError>) -> (ErrorCode, String) {
    match answer {
        Err(refused) => (refused.code, refused.message),
        Ok(response) => panic!("expected a refusal, got {response:?}"),
    }
}
