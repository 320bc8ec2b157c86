//! Mock NSM for mock builds: documents in the real format, signed by a local CA kept in
//! a directory so the mock KMS and restarted enclaves share one trust root.

use std::collections::BTreeMap;
use std::path::Path;

use common::mock_nsm::{MockCa, MockNsm};

use super::{Nsm, NsmError};

pub struct MockNsmDevice {
    nsm: MockNsm,
}

impl MockNsmDevice {
    /// Loads the CA from `ca_dir` (creating it on first use) and issues documents with
    /// the given PCR values.
    pub fn new(ca_dir: &Path, pcrs: &BTreeMap<u8, [u8; 48]>) -> Result<MockNsmDevice, NsmError> {
        let ca = MockCa::load_or_generate(ca_dir).map_err(|e| NsmError::Refused(e.to_string()))?;
        let nsm = ca.nsm(pcrs).map_err(|e| NsmError::Refused(e.to_string()))?;
        Ok(MockNsmDevice { nsm })
    }
}

impl Nsm for MockNsmDevice {
    fn attest(&self, public_key: &[u8]) -> Result<Vec<u8>, NsmError> {
        self.nsm
            .attest(Some(public_key), None, None)
            .map_err(|e| NsmError::Refused(e.to_string()))
    }

    fn attest_for_caller(&self, user_data: &[u8], nonce: &[u8]) -> Result<Vec<u8>, NsmError> {
        self.nsm
            .attest(None, Some(user_data), Some(nonce))
            .map_err(|e| NsmError::Refused(e.to_string()))
    }

    /// No hardware here: the OS RNG stands in (the seed mixes it in a second time).
    fn random(&self) -> Result<Vec<u8>, NsmError> {
        let mut bytes = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| NsmError::Refused("OS RNG".into()))?;
        Ok(bytes)
    }
}
