//! The host's Prometheus metrics, served on `GET /metrics` in the Prometheus text format.
//!
//! One registry per process, like the Prometheus convention (and so every layer counts
//! without a handle threaded through it): [`global`]. What only the enclave knows (its
//! KMS calls, the distribution account's remaining budget) is asked of it at scrape time
//! ([`Request::Stats`](common::wire::messages::Request::Stats)) and encoded next to the
//! host's own series, as are the channel pool's counts. No label carries a key, a
//! transaction or a caller-supplied string: roles, kinds, results, codes, rule names.

use std::sync::LazyLock;
use std::time::Duration;

use common::wire::ErrorCode;
use common::wire::messages::{EnclaveStats, KMS_DURATION_BUCKETS_US};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::ChannelSummary;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignatureLabels {
    role: &'static str,
    kind: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// The host's own series.
pub struct Metrics {
    registry: Registry,
    signatures: Family<SignatureLabels, Counter>,
    sign_duration: Family<KindLabels, Histogram>,
    enclave_round_trip: Histogram,
    channel_acquisitions: Family<ResultLabels, Counter>,
    policy_refusals: Family<RuleLabels, Counter>,
    limit_refusals: Family<LimitLabels, Counter>,
}

/// Latency buckets (seconds) from a cached signature (well under a millisecond) to a
/// KMS call at its bound.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let signatures = Family::<SignatureLabels, Counter>::default();
        registry.register(
            "signer_signatures",
            "Signatures asked of the enclave, one per signer key: signed, refused (4xx: \
             policy, unknown key, bad input, KMS denial) or failed (5xx: enclave, KMS or store down)",
            signatures.clone(),
        );
        let sign_duration =
            Family::<KindLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "signer_sign_duration_seconds",
            "Time from a signing request's arrival to its answer, by kind",
            sign_duration.clone(),
        );
        let enclave_round_trip = latency_histogram();
        registry.register(
            "signer_enclave_round_trip_seconds",
            "Time from a request leaving for the enclave to its answer (KMS calls included)",
            enclave_round_trip.clone(),
        );
        let channel_acquisitions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "signer_channel_acquisitions",
            "Channel acquisitions: acquired, exhausted (no idle account), empty (no accounts) or error",
            channel_acquisitions.clone(),
        );
        let policy_refusals = Family::<RuleLabels, Counter>::default();
        registry.register(
            "signer_policy_refusals",
            "Signing-policy refusals by rule, whether the host's pre-check or the enclave refused",
            policy_refusals.clone(),
        );
        let limit_refusals = Family::<LimitLabels, Counter>::default();
        registry.register(
            "signer_api_limit_refusals",
            "Connections and requests the host API refused at one of its limits, by the \
             limit's setting: max_connections, max_connections_per_uid, probe_only (a quarter \
             of max_connections), max_buffered_body_bytes, max_buffered_body_bytes_per_uid",
            limit_refusals.clone(),
        );
        Metrics {
            registry,
            signatures,
            sign_duration,
            enclave_round_trip,
            channel_acquisitions,
            policy_refusals,
            limit_refusals,
        }
    }

    /// Counts one signer's outcome of a signing request of `kind`.
    pub fn signature(&self, role: &'static str, kind: &'static str, outcome: Option<ErrorCode>) {
        self.signatures
            .get_or_create(&SignatureLabels {
                role,
                kind,
                result: result_of(outcome),
            })
            .inc();
    }

    /// Counts a signing-policy refusal of `rule`.
    pub fn policy_refusal(&self, rule: &str) {
        self.policy_refusals
            .get_or_create(&RuleLabels {
                rule: rule.to_string(),
            })
            .inc();
    }

    /// Counts a connection or request refused at the host API's `limit`.
    pub fn limit_refusal(&self, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    pub fn sign_duration(&self, kind: &'static str, elapsed: Duration) {
        self.sign_duration
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    pub fn enclave_round_trip(&self, elapsed: Duration) {
        self.enclave_round_trip.observe(elapsed.as_secs_f64());
    }

    /// Counts an acquisition: `None` when it succeeded, else its error code.
    pub fn channel_acquisition(&self, outcome: Option<ErrorCode>) {
        let result = match outcome {
            None => "acquired",
            Some(ErrorCode::NoIdleChannelAccount) => "exhausted",
            Some(ErrorCode::NoChannelAccountsConfigured) => "empty",
            Some(_) => "error",
        };
        self.channel_acquisitions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The whole text of `GET /metrics`: the host's series, then what was read at this
    /// scrape.
    pub fn render(&self, scrape: Scrape) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        let mut per_scrape = Registry::default();
        per_scrape.register_collector(Box::new(scrape));
        prometheus_client::encoding::prometheus_text::encode(&mut text, &per_scrape)?;
        Ok(text)
    }
}

/// `signed`, `refused` (a 4xx code: the request was refused) or `failed` (a 5xx code, or
/// KMS throttling: the service could not do it now).
fn result_of(outcome: Option<ErrorCode>) -> &'static str {
    match outcome {
        None => "signed",
        Some(ErrorCode::KmsThrottled) => "failed",
        Some(code) if code.http_status() < 500 => "refused",
        Some(_) => "failed",
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// What `GET /metrics` reads at each scrape.
#[derive(Debug)]
pub struct Scrape {
    /// The enclave's counters, when it answered.
    pub enclave: Option<EnclaveStats>,
    /// The channel pool, when the store answered.
    pub channels: Option<ChannelSummary>,
    /// Which enclave build is connected (`production`, `mock`), if any.
    pub enclave_build: Option<String>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build = [
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            (
                "enclave_build",
                self.enclave_build
                    .clone()
                    .unwrap_or_else(|| "disconnected".into()),
            ),
            (
                "protocol",
                common::wire::messages::PROTOCOL_VERSION.to_string(),
            ),
        ];
        let mut metric = encoder.encode_descriptor(
            "signer_build_info",
            "The host's version, the connected enclave's build and the protocol version",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(metric.encode_family(&build.as_slice())?)?;

        let metric = encoder.encode_descriptor(
            "signer_enclave_up",
            "1 when the enclave answered this scrape's request for its counters",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.enclave.is_some())).encode(metric)?;

        if let Some(channels) = &self.channels {
            let mut metric = encoder.encode_descriptor(
                "signer_channel_accounts",
                "Channel accounts in the pool by state (expired: a lock lapsed without a release)",
                None,
                MetricType::Gauge,
            )?;
            for (state, count) in [
                ("idle", channels.idle),
                ("locked", channels.locked),
                ("expired", channels.expired),
            ] {
                let gauge = ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX));
                gauge.encode(metric.encode_family(&[("state", state)].as_slice())?)?;
            }
        }
        if let Some(stats) = &self.enclave {
            encode_enclave(stats, &mut encoder)?;
        }
        Ok(())
    }
}

fn encode_enclave(
    stats: &EnclaveStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(
        "signer_fee_budget_remaining_stroops",
        "Fees the distribution account may still pay in the enclave's current budget window",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(stats.fee_budget_remaining_stroops).encode(metric)?;
    let metric = encoder.encode_descriptor(
        "signer_sponsorships_remaining",
        "Accounts the distribution account may still sponsor in the current budget window",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(stats.sponsorships_remaining)).encode(metric)?;

    let mut metric = encoder.encode_descriptor(
        "signer_kms_requests",
        "KMS calls the enclave made, by operation and result (ok or the error code)",
        None,
        MetricType::Counter,
    )?;
    for call in &stats.kms_calls {
        let labels = [
            ("operation", call.operation.as_str()),
            ("result", call.result.as_str()),
        ];
        ConstCounter::new(call.count).encode(metric.encode_family(&labels.as_slice())?)?;
    }
    let mut metric = encoder.encode_descriptor(
        "signer_kms_duration_seconds",
        "Duration of the enclave's KMS calls (retries included), by operation and result",
        None,
        MetricType::Histogram,
    )?;
    for call in &stats.kms_calls {
        let labels = [
            ("operation", call.operation.as_str()),
            ("result", call.result.as_str()),
        ];
        // Whatever the enclave sent, only the known bounds are read.
        let buckets: Vec<(f64, u64)> = KMS_DURATION_BUCKETS_US
            .iter()
            .zip(&call.buckets)
            .map(|(&bound, &count)| (bound as f64 / 1e6, count))
            .collect();
        metric
            .encode_family(&labels.as_slice())?
            .encode_histogram::<NoLabelSet>(call.sum_us as f64 / 1e6, call.count, &buckets, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use common::wire::messages::KmsCallStats;

    #[test]
    fn every_series_renders_in_the_prometheus_text_format() {
        let metrics = Metrics::new();
        metrics.signature("channel", "sign", None);
        metrics.signature("channel", "sign", Some(ErrorCode::PolicyViolation));
        metrics.signature(
            "distribution",
            "fee_bump",
            Some(ErrorCode::EnclaveUnavailable),
        );
        metrics.policy_refusal("fee_cap");
        metrics.sign_duration("sign", Duration::from_millis(3));
        metrics.enclave_round_trip(Duration::from_micros(300));
        metrics.channel_acquisition(None);
        metrics.channel_acquisition(Some(ErrorCode::NoIdleChannelAccount));
        metrics.limit_refusal("max_connections_per_uid");
        let mut buckets = vec![0; KMS_DURATION_BUCKETS_US.len()];
        buckets[2] = 4;
        let text = metrics
            .render(Scrape {
                enclave: Some(EnclaveStats {
                    kms_calls: vec![KmsCallStats {
                        operation: "Decrypt".into(),
                        result: "ok".into(),
                        count: 5,
                        buckets,
                        sum_us: 20_000,
                    }],
                    fee_budget_remaining_stroops: 900,
                    sponsorships_remaining: 7,
                }),
                channels: Some(ChannelSummary {
                    total: 3,
                    idle: 2,
                    locked: 1,
                    expired: 0,
                    accounts: None,
                }),
                enclave_build: Some("mock".into()),
            })
            .unwrap();
        for line in [
            "signer_signatures_total{role=\"channel\",kind=\"sign\",result=\"signed\"} 1",
            "signer_signatures_total{role=\"channel\",kind=\"sign\",result=\"refused\"} 1",
            "signer_signatures_total{role=\"distribution\",kind=\"fee_bump\",result=\"failed\"} 1",
            "signer_policy_refusals_total{rule=\"fee_cap\"} 1",
            "signer_sign_duration_seconds_count{kind=\"sign\"} 1",
            "signer_enclave_round_trip_seconds_count 1",
            "signer_channel_acquisitions_total{result=\"exhausted\"} 1",
            "signer_api_limit_refusals_total{limit=\"max_connections_per_uid\"} 1",
            "signer_channel_accounts{state=\"idle\"} 2",
            "signer_fee_budget_remaining_stroops 900",
            "signer_kms_requests_total{operation=\"Decrypt\",result=\"ok\"} 5",
            "signer_kms_duration_seconds_bucket{operation=\"Decrypt\",result=\"ok\",le=\"0.005\"} 4",
            "signer_kms_duration_seconds_count{operation=\"Decrypt\",result=\"ok\"} 5",
            "signer_enclave_up 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains("signer_build_info{version=\""), "{text}");
    }
}
