//! The benchmark's figures, by the dotted keys of its JSON (`sign_cached.c64.p99_us`),
//! and the table printed from them, with the targets of the README next to the ratios.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::load::Stats;

/// `value` with `decimals` decimals, or `-` when it was not measured.
fn shown(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

#[derive(Debug, Default)]
pub struct Report {
    figures: Map<String, Value>,
}

impl Report {
    pub fn set(&mut self, key: &str, value: f64) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let Some(last) = parts.pop() else { return };
        let mut node = &mut self.figures;
        for part in parts {
            let entry = node
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else { return };
            node = next;
        }
        let rounded = (value * 1000.0).round() / 1000.0;
        node.insert(last.to_string(), Value::from(rounded));
    }

    pub fn set_max(&mut self, key: &str, value: f64) {
        let value = self.get(key).map_or(value, |old| old.max(value));
        self.set(key, value);
    }

    pub fn set_stats(&mut self, prefix: &str, stats: Stats) {
        self.set(&format!("{prefix}.per_s"), stats.per_s);
        self.set(&format!("{prefix}.p50_us"), stats.p50.as_secs_f64() * 1e6);
        self.set(&format!("{prefix}.p99_us"), stats.p99.as_secs_f64() * 1e6);
    }

    /// The figure at `key` with `decimals` decimals, or `-` when it was not measured.
    fn shown(&self, key: &str, decimals: usize) -> String {
        shown(self.get(key), decimals)
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        let mut node = self.figures.get(key.split('.').next()?)?;
        for part in key.split('.').skip(1) {
            node = node.get(part)?;
        }
        node.as_f64()
    }

    pub fn json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.figures).unwrap_or_default();
        text.push('\n');
        text
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let figure = |key: &str| self.shown(key, 0);
        let _ = writeln!(
            out,
            "\nbaselines (one core each; the round trip at 64 connections)"
        );
        for (label, key) in [
            (
                "ed25519 signature of a payload hash",
                "baseline.ed25519_sign_per_s",
            ),
            (
                "RSA-2048 OAEP-SHA256 decryption (aws-lc-rs)",
                "baseline.rsa_decrypt_per_s",
            ),
            (
                "bare Unix-socket round trip",
                "baseline.uds_round_trip_per_s",
            ),
        ] {
            let _ = writeln!(out, "  {label:<46} {:>10} /s", figure(key));
        }
        let _ = writeln!(
            out,
            "\n{:<28} {:>7} {:>10} {:>10} {:>10}",
            "through host and enclave", "clients", "per s", "p50 µs", "p99 µs"
        );
        for (label, prefix) in [
            ("GET /v1/ping", "ping"),
            ("sign, per-call KMS", "sign_per_call"),
            ("sign, enclave key cache", "sign_cached"),
        ] {
            for clients in ["c1", "c16", "c64"] {
                let key = |field: &str| figure(&format!("{prefix}.{clients}.{field}"));
                let _ = writeln!(
                    out,
                    "{label:<28} {:>7} {:>10} {:>10} {:>10}",
                    &clients[1..],
                    key("per_s"),
                    key("p50_us"),
                    key("p99_us")
                );
            }
        }
        let _ = writeln!(out, "\nsign, per-call, 64 clients, KMS latency injected");
        for ms in ["ms0", "ms10", "ms50"] {
            let per_s = figure(&format!("sign_per_call_kms_latency.{ms}.per_s"));
            let _ = writeln!(out, "  {:>5} ms {per_s:>10} /s", &ms[2..]);
        }
        let rsa_ms = self.get("baseline.rsa_decrypt_per_s").map(|r| 1e3 / r);
        let _ = writeln!(
            out,
            "\nenclave CPU per per-call signature {:>8} ms (RSA decryption alone: {} ms)",
            self.shown("enclave_cpu_ms_per_signature", 2),
            shown(rsa_ms, 2)
        );
        let _ = writeln!(
            out,
            "channel acquire+release, 64 clients: {} pairs/s at 1,000 accounts, {} at 10,000",
            figure("channels.a1000.pairs_per_s"),
            figure("channels.a10000.pairs_per_s")
        );
        let _ = writeln!(
            out,
            "  on PostgreSQL, 1,000 accounts: {} pairs/s with 1 host, {} with 3 hosts",
            figure("channels_postgres.hosts1.pairs_per_s"),
            figure("channels_postgres.hosts3.pairs_per_s")
        );
        let _ = writeln!(
            out,
            "peak RSS: host {} MiB, enclave {} MiB",
            figure("rss_mib.host"),
            figure("rss_mib.enclave")
        );
        out.push_str(&self.cpu_table());
        out.push_str(&self.targets());
        out.push_str(&self.cached_bound());
        out
    }

    /// CPU per request of each process at 64 clients, where the machine is saturated.
    fn cpu_table(&self) -> String {
        let mut out = format!(
            "\n{:<28} {:>7} {:>7} {:>7} {:>8} {:>7}\n",
            "CPU µs per request, c64", "client", "host", "enclave", "mock KMS", "all"
        );
        for (label, name) in [
            ("GET /v1/ping", "ping"),
            ("sign, per-call KMS", "sign_per_call"),
            ("sign, enclave key cache", "sign_cached"),
        ] {
            let us = |process: &str| self.shown(&format!("cpu_us_per_request.{name}.{process}"), 1);
            let _ = writeln!(
                out,
                "{label:<28} {:>7} {:>7} {:>7} {:>8} {:>7}",
                us("client"),
                us("host"),
                us("enclave"),
                us("kms"),
                us("total")
            );
        }
        out
    }

    /// How far cached signing could go on this machine at this run's CPU per signature,
    /// against the cached/ping target: with every core busy it does at most cores / CPU
    /// per signature (an upper bound, whether or not the ping run kept every core busy),
    /// and 0.7 times ping fixes the CPU a signature may use in all.
    fn cached_bound(&self) -> String {
        let (Some(cores), Some(ping_per_s), Some(ping_us), Some(cached_us), Some(ed_per_s)) = (
            self.get("machine.cores"),
            self.get("ping.c64.per_s"),
            self.get("cpu_us_per_request.ping.total"),
            self.get("cpu_us_per_request.sign_cached.total"),
            self.get("baseline.ed25519_sign_per_s"),
        ) else {
            return String::new();
        };
        let busy = |name: &str| self.shown(&format!("cores_busy.{name}"), 1);
        let bound_per_s = cores * 1e6 / cached_us;
        format!(
            "\ncached signing could reach at most {bound_per_s:.0}/s here, {:.2} times ping c64: \
             {cached_us:.1} µs of CPU per signature\non {cores:.0} cores (busy: {} in the ping \
             run, {} in cached signing). 0.7 times ping would need at most {:.1} µs\nper \
             signature in all, of which a ping's own work takes {ping_us:.1} µs and one ed25519 \
             signature {:.1} µs\n",
            bound_per_s / ping_per_s,
            busy("ping"),
            busy("sign_cached"),
            cores * 1e6 / (0.7 * ping_per_s),
            1e6 / ed_per_s
        )
    }

    fn ratio(&self, numerator: &str, denominator: &str) -> Option<f64> {
        Some(self.get(numerator)? / self.get(denominator)?)
    }

    /// The targets for this 2-core machine, as measured ratios.
    fn targets(&self) -> String {
        let rsa_ms = self.get("baseline.rsa_decrypt_per_s").map(|r| 1e3 / r);
        let cpu = self.get("enclave_cpu_ms_per_signature");
        // 64 closed-loop clients cannot exceed 64 / (time per request + 50 ms): the
        // stack adds nothing to injected latency when the figure reaches this bound.
        let latency_bound = self
            .get("sign_per_call_kms_latency.ms0.per_s")
            .map(|per_s| 64.0 / (64.0 / per_s + 0.050));
        let latency_vs_bound = self
            .get("sign_per_call_kms_latency.ms50.per_s")
            .zip(latency_bound)
            .map(|(measured, bound)| measured / bound);
        let checks: [(&str, Option<f64>, f64, bool); 8] = [
            (
                "cached sign c64 / ping c64",
                self.ratio("sign_cached.c64.per_s", "ping.c64.per_s"),
                0.7,
                true,
            ),
            (
                "cached sign c64 p99 (ms)",
                self.get("sign_cached.c64.p99_us").map(|us| us / 1e3),
                10.0,
                false,
            ),
            (
                "ping c64 / bare round trip",
                self.ratio("ping.c64.per_s", "baseline.uds_round_trip_per_s"),
                0.4,
                true,
            ),
            (
                "enclave CPU per signature / RSA",
                cpu.zip(rsa_ms).map(|(c, r)| c / r),
                1.5,
                false,
            ),
            (
                "per-call c64, 50 ms KMS / 0 ms",
                self.ratio(
                    "sign_per_call_kms_latency.ms50.per_s",
                    "sign_per_call_kms_latency.ms0.per_s",
                ),
                0.9,
                true,
            ),
            (
                "  same vs its bound 64/(64/ms0 + 50 ms)",
                latency_vs_bound,
                0.9,
                true,
            ),
            (
                "channel pairs/s at 1,000 accounts",
                self.get("channels.a1000.pairs_per_s"),
                20_000.0,
                true,
            ),
            (
                "cost at 10,000 / at 1,000 accounts",
                self.ratio("channels.a1000.pairs_per_s", "channels.a10000.pairs_per_s"),
                1.2,
                false,
            ),
        ];
        let mut out = String::from("\ntargets (ratios from this run)\n");
        for (label, value, target, at_least) in checks {
            let (sign, met) = match value {
                Some(v) if at_least => (">=", v >= target),
                Some(v) => ("<=", v <= target),
                None => ("", false),
            };
            let value_text = shown(value, 2);
            let verdict = if met { "met" } else { "NOT met" };
            let _ = writeln!(
                out,
                "  {label:<38} {value_text:>10}  target {sign} {target:<8} {verdict}"
            );
        }
        let rss = self.get("rss_mib.enclave");
        let met = rss.is_some_and(|r| r < 64.0);
        let _ = writeln!(
            out,
            "  {:<38} {:>10}  target <  64       {}",
            "enclave peak RSS (MiB)",
            shown(rss, 1),
            if met { "met" } else { "NOT met" }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report with the figures the bound needs besides the CPU per request: 2 cores,
    /// ed25519 at 50,000/s, ping at 64 clients 50,000/s.
    fn two_cores_pinging_50k() -> Report {
        let mut report = Report::default();
        report.set("machine.cores", 2.0);
        report.set("baseline.ed25519_sign_per_s", 50_000.0);
        report.set("ping.c64.per_s", 50_000.0);
        report
    }

    /// The bound is what every core could do at cached signing's CPU per signature, next
    /// to ping; 0.7 times ping's budget per signature is shown beside a ping's own CPU and
    /// one ed25519 signature; the CPU table shows each process.
    #[test]
    fn the_cached_bound_comes_from_the_cpu_per_request_of_this_run() {
        let mut report = two_cores_pinging_50k();
        for (process, ping, cached) in [
            ("client", 7.0, 14.0),
            ("host", 14.0, 50.0),
            ("enclave", 7.0, 36.0),
            ("kms", 0.0, 0.0),
            ("total", 28.0, 100.0),
        ] {
            report.set(&format!("cpu_us_per_request.ping.{process}"), ping);
            report.set(&format!("cpu_us_per_request.sign_cached.{process}"), cached);
        }
        report.set("cores_busy.ping", 1.4);
        report.set("cores_busy.sign_cached", 1.9);
        let table = report.table();
        for expected in [
            // 2 cores / 100 µs, and that over 50,000 pings/s.
            "at most 20000/s here, 0.40 times ping c64",
            "(busy: 1.4 in the ping run, 1.9 in cached signing)",
            // 2 cores / (0.7 * 50,000/s).
            "would need at most 57.1 µs",
            "a ping's own work takes 28.0 µs and one ed25519 signature 20.0 µs",
        ] {
            assert!(table.contains(expected), "{expected:?} not in:\n{table}");
        }
        let cached_row = table
            .lines()
            .find(|line| line.starts_with("sign, enclave key cache") && line.contains("100.0"))
            .unwrap_or_else(|| panic!("no CPU row for cached signing in:\n{table}"));
        let columns: Vec<&str> = cached_row.split_whitespace().skip(4).collect();
        assert_eq!(columns, ["14.0", "50.0", "36.0", "0.0", "100.0"]);
    }

    /// Without the CPU figures (a run below 64 clients) no bound is claimed.
    #[test]
    fn no_bound_without_cpu_figures() {
        let mut report = two_cores_pinging_50k();
        report.set("cpu_us_per_request.ping.total", 28.0);
        assert!(!report.table().contains("could reach at most"));
    }
}
