//! A [`Kms`] that counts every call of the one it wraps (operation, result, duration)
//! into the enclave's [`KmsMetrics`].

use std::sync::Arc;
use std::time::Instant;

use common::wire::messages::AwsCredentials;
use futures_util::future::BoxFuture;

use super::{GeneratedDataKey, Kms, KmsError, RecipientAnswer};
use crate::metrics::KmsMetrics;

pub struct MeteredKms {
    inner: Arc<dyn Kms>,
    metrics: Arc<KmsMetrics>,
}

impl MeteredKms {
    pub fn new(inner: Arc<dyn Kms>, metrics: Arc<KmsMetrics>) -> MeteredKms {
        MeteredKms { inner, metrics }
    }

    fn record<T>(&self, operation: &'static str, started: Instant, result: &Result<T, KmsError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        self.metrics.record(operation, outcome, started.elapsed());
    }
}

impl Kms for MeteredKms {
    fn decrypt_for_recipient<'a>(
        &'a self,
        ciphertext_blob: &'a [u8],
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<RecipientAnswer, KmsError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self
                .inner
                .decrypt_for_recipient(
                    ciphertext_blob,
                    key_id,
                    encryption_context,
                    attestation_document,
                )
                .await;
            self.record("Decrypt", started, &result);
            result
        })
    }

    fn generate_data_key_for_recipient<'a>(
        &'a self,
        key_id: &'a str,
        encryption_context: &'a [(&'a str, &'a str)],
        attestation_document: &'a [u8],
    ) -> BoxFuture<'a, Result<GeneratedDataKey, KmsError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self
                .inner
                .generate_data_key_for_recipient(key_id, encryption_context, attestation_document)
                .await;
            self.record("GenerateDataKey", started, &result);
            result
        })
    }

    fn set_credentials(&self, credentials: AwsCredentials) {
        self.inner.set_credentials(credentials);
    }
}
