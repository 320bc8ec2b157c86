//! The real NSM, through `/dev/nsm`.

use std::sync::Mutex;

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

use super::{Nsm, NsmError};

#[derive(Debug)]
pub struct NitroNsm {
    // The driver is a blocking ioctl on one descriptor; serialise its use.
    fd: Mutex<i32>,
}

impl NitroNsm {
    pub fn open() -> Result<NitroNsm, NsmError> {
        let fd = nsm_init();
        if fd < 0 {
            return Err(NsmError::Unavailable);
        }
        Ok(NitroNsm { fd: Mutex::new(fd) })
    }
}

impl NitroNsm {
    /// One attestation request to the device (its lock held for the ioctl).
    fn attestation(
        &self,
        public_key: Option<&[u8]>,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        let fd = self
            .fd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes = |b: Option<&[u8]>| b.map(|b| ByteBuf::from(b.to_vec()));
        let request = Request::Attestation {
            user_data: bytes(user_data),
            nonce: bytes(nonce),
            public_key: bytes(public_key),
        };
        match nsm_process_request(*fd, request) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(NsmError::Refused(format!("{code:?}"))),
            _ => Err(NsmError::Refused("unexpected response".into())),
        }
    }
}

impl Nsm for NitroNsm {
    fn attest(&self, public_key: &[u8]) -> Result<Vec<u8>, NsmError> {
        self.attestation(Some(public_key), None, None)
    }

    fn attest_for_caller(&self, user_data: &[u8], nonce: &[u8]) -> Result<Vec<u8>, NsmError> {
        self.attestation(None, Some(user_data), Some(nonce))
    }

    fn random(&self) -> Result<Vec<u8>, NsmError> {
        let fd = self
            .fd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match nsm_process_request(*fd, Request::GetRandom) {
            Response::GetRandom { random } => Ok(random),
            Response::Error(code) => Err(NsmError::Refused(format!("{code:?}"))),
            _ => Err(NsmError::Refused("unexpected response".into())),
        }
    }
}

impl Drop for NitroNsm {
    fn drop(&mut self) {
        let fd = *self
            .fd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nsm_exit(fd);
    }
}
