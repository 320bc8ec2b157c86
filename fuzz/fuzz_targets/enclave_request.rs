//! Host-to-enclave requests through the enclave's real dispatcher and signing path,
//! with a scripted KMS: no panic, and KMS is asked only for requests that passed the
//! checks that need no seed (see `FuzzEnclave::run`).
#![no_main]
// A panic is how a fuzz target reports a broken property.
#![allow(clippy::expect_used, clippy::panic)]

use libfuzzer_sys::fuzz_target;
use signer_fuzz::{FuzzEnclave, RequestInput};

fuzz_target!(|data: &[u8]| {
    if let Some(input) = RequestInput::split(data) {
        let _outcome = FuzzEnclave::get().run(&input);
    }
});
