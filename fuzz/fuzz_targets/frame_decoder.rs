//! The length-prefixed frame decoder and the postcard messages in it, fed in chunks
//! as a socket would: no panic, no allocation past the frame limit, and every message
//! that decodes encodes back to one that decodes to the same value.
#![no_main]
// A panic is how a fuzz target reports a broken property.
#![allow(clippy::expect_used, clippy::panic)]

use bytes::BytesMut;
use common::wire::frame::{FrameCodec, decode_message, encode_message};
use common::wire::messages::{EnclaveMessage, HostMessage, peek_hello_version};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk.max(1));
    let mut codec = FrameCodec::new();
    let mut buffer = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => check_frame(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    while let Ok(Some(frame)) = codec.decode_eof(&mut buffer) {
        check_frame(&frame);
    }
});

fn check_frame(frame: &[u8]) {
    let _version = peek_hello_version(frame);
    if let Ok(message) = decode_message::<HostMessage>(frame) {
        round_trips(&message);
    }
    if let Ok(message) = decode_message::<EnclaveMessage>(frame) {
        round_trips(&message);
    }
}

fn round_trips<T>(message: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    // A message decoded from a frame under the limit may re-encode over it only if
    // postcard's encoding were not canonical; anything else must round-trip.
    let Ok(encoded) = encode_message(message) else {
        return;
    };
    let decoded: T = decode_message(&encoded).expect("a re-encoded message decodes");
    assert_eq!(&decoded, message, "decode(encode(m)) != m");
}
