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

impl Nsm for NitroNsm {
    fn attest(&self, public_key: &[u8]) -> Result<Vec<u8>, NsmError> {
        let fd = self
            .fd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let request = Request::Attestation {
            user_data: None,
            nonce: None,
            public_key: Some(ByteBuf::from(public_key.to_vec())),
        };
        match nsm_process_request(*fd, request) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(NsmError::Refused(format!("{code:?}"))),
            _ => Err(NsmError::Refused("unexpected response".into())),
        }
    }

    fn attest_for_caller(&self, user_data: &[u8], nonce: &[u8]) -> Result<Vec<u8>, NsmError> {
        let fd = self
            .fd
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let request = Request::Attestation {
            user_data: Some(ByteBuf::from(user_data.to_vec())),
            nonce: Some(ByteBuf::from(nonce.to_vec())),
            public_key: None,
        };
        match nsm_process_request(*fd, request) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(NsmError::Refused(format!("{code:?}"))),
            _ => Err(NsmError::Refused("unexpected response".into())),
        }
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
