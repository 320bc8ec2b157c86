//! The enclave's own counters: every KMS call by operation and result, with its
//! duration. The enclave has no network, so the host asks for them
//! ([`common::wire::messages::Request::Stats`]) and serves them on its `/metrics`.
//! Nothing here is secret: operation names, error codes, counts and durations.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::wire::messages::{KMS_DURATION_BUCKETS_US, KmsCallStats};

#[derive(Default)]
struct Series {
    count: u64,
    buckets: [u64; KMS_DURATION_BUCKETS_US.len()],
    sum_us: u64,
}

/// KMS calls by (operation, result).
#[derive(Default)]
pub struct KmsMetrics {
    series: Mutex<BTreeMap<(&'static str, &'static str), Series>>,
}

impl KmsMetrics {
    /// Counts one call of `operation` that ended with `result` after `elapsed`.
    pub fn record(&self, operation: &'static str, result: &'static str, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = series.entry((operation, result)).or_default();
        entry.count += 1;
        entry.sum_us = entry.sum_us.saturating_add(micros);
        if let Some(bucket) = KMS_DURATION_BUCKETS_US
            .iter()
            .position(|&bound| micros <= bound)
            && let Some(slot) = entry.buckets.get_mut(bucket)
        {
            *slot += 1;
        }
    }

    /// Every series so far.
    pub fn snapshot(&self) -> Vec<KmsCallStats> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series
            .iter()
            .map(|((operation, result), s)| KmsCallStats {
                operation: (*operation).to_string(),
                result: (*result).to_string(),
                count: s.count,
                buckets: s.buckets.to_vec(),
                sum_us: s.sum_us,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn calls_are_counted_per_operation_and_result_into_their_buckets() {
        let metrics = KmsMetrics::default();
        metrics.record("Decrypt", "ok", Duration::from_micros(800));
        metrics.record("Decrypt", "ok", Duration::from_millis(30));
        metrics.record("Decrypt", "kms_throttled", Duration::from_secs(20));
        metrics.record("GenerateDataKey", "ok", Duration::from_millis(3));
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 3);
        let find = |operation: &str, result: &str| {
            snapshot
                .iter()
                .find(|s| s.operation == operation && s.result == result)
                .unwrap()
        };
        let ok = find("Decrypt", "ok");
        assert_eq!(ok.count, 2);
        assert_eq!(ok.sum_us, 30_800);
        // 800 µs in the first bucket (≤ 1 ms), 30 ms in the ≤ 50 ms one.
        assert_eq!(ok.buckets[0], 1);
        assert_eq!(ok.buckets[5], 1);
        assert_eq!(ok.buckets.iter().sum::<u64>(), 2);
        // Slower than the last bound: in the count, in no bucket.
        let throttled = find("Decrypt", "kms_throttled");
        assert_eq!(throttled.count, 1);
        assert_eq!(throttled.buckets.iter().sum::<u64>(), 0);
    }
}
