//! The report of a run: JSON for machines, a table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::churn::{ChangeKind, Outcome};
use crate::proxy::{CounterSnapshot, XdsKind};
use crate::stats::Summary;

/// Per-type figures with a total: `{"total": …, "CDS": …, "EDS": …, "LDS": …, "RDS": …}`.
pub type PerType = BTreeMap<String, f64>;

/// `counters` (responses or bytes) by type, each divided by `divisor`, with their total.
pub fn per_type(values: [u64; 4], divisor: f64) -> PerType {
    let d = if divisor > 0.0 { divisor } else { 1.0 };
    let mut m: PerType = XdsKind::ALL
        .iter()
        .map(|k| (k.label().to_string(), values[*k as usize] as f64 / d))
        .collect();
    m.insert("total".to_string(), values.iter().sum::<u64>() as f64 / d);
    m
}

/// How many changes of one kind were written, measured, timed out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KindCount {
    /// Written.
    pub written: usize,
    /// Every proxy had it within the timeout.
    pub measured: usize,
    /// Not every proxy had it within the timeout.
    pub timed_out: usize,
    /// Not measurable: nothing in Envoy's configuration depends on it.
    pub unobservable: usize,
    /// Convergence of the measured ones, ms.
    pub convergence_ms: Summary,
}

/// Change counts, total and by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Changes {
    /// Written.
    pub written: usize,
    /// Measured (converged at every proxy).
    pub measured: usize,
    /// Timed out.
    pub timed_out: usize,
    /// Not observable.
    pub unobservable: usize,
    /// By kind (`scale_up`, …).
    pub by_kind: BTreeMap<String, KindCount>,
}

impl Changes {
    /// Counts `outcomes`.
    pub fn of(outcomes: &[Outcome]) -> Self {
        let mut c = Changes::default();
        for kind in ChangeKind::ALL {
            let of_kind: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let k = KindCount {
                written: of_kind.len(),
                measured: of_kind.iter().filter(|o| o.converged_ms.is_some()).count(),
                timed_out: of_kind.iter().filter(|o| o.timed_out).count(),
                unobservable: of_kind
                    .iter()
                    .filter(|o| !o.timed_out && o.converged_ms.is_none())
                    .count(),
                convergence_ms: Summary::of(of_kind.iter().filter_map(|o| o.converged_ms)),
            };
            c.written += k.written;
            c.measured += k.measured;
            c.timed_out += k.timed_out;
            c.unobservable += k.unobservable;
            c.by_kind.insert(kind.label().to_string(), k);
        }
        c
    }
}

/// Figures from strait's own `/metrics`, over the churn phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StraitMetrics {
    /// Pushes (debounced batches).
    pub pushes: f64,
    /// Seconds spent building pushes (sum).
    pub push_seconds: f64,
    /// Mean seconds per push.
    pub push_seconds_mean: f64,
    /// Responses strait counted, by type.
    pub responses: PerType,
    /// Bytes strait counted, by type.
    pub bytes: PerType,
    /// NACKs strait counted.
    pub nacks: f64,
}

/// Everything a load run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `strait-load`.
    pub tool: String,
    /// The machine: CPUs, memory.
    pub machine: BTreeMap<String, serde_json::Value>,
    /// Every parameter of the run.
    pub params: serde_json::Value,
    /// Services at the start.
    pub services: usize,
    /// Services at the end (churn adds some).
    pub services_at_end: usize,
    /// Simulated proxies.
    pub proxies: usize,
    /// Delta (incremental) xDS.
    pub delta: bool,
    /// Proxies that received their complete configuration.
    pub proxies_synced: usize,
    /// Seconds from the start of connecting until every proxy had its complete configuration
    /// (all of CDS, EDS for every cluster, LDS, RDS, each ACKed). `None`: not all did.
    pub initial_sync_seconds: Option<f64>,
    /// Each proxy's own time from connecting to configured, ms.
    pub initial_sync_per_proxy_ms: Summary,
    /// Bytes received by all proxies for their initial configuration, by type.
    pub initial_bytes: PerType,
    /// From a file write to the ACK of the last proxy, ms, over every measured change.
    pub convergence_ms: Summary,
    /// `convergence_ms.p99` minus the debounce quiet period.
    pub convergence_p99_beyond_debounce_ms: f64,
    /// Convergence of the endpoint changes alone (scale-up, scale-down, readiness), ms.
    pub endpoint_convergence_ms: Summary,
    /// `endpoint_convergence_ms.p99` minus the debounce quiet period.
    pub endpoint_p99_beyond_debounce_ms: f64,
    /// From the write of an endpoint change to the first proxy's ACK of it, ms: strait's
    /// read, debounce and build.
    pub endpoint_first_ack_ms: Summary,
    /// From the write of an endpoint change to the ACK that brought half the proxies to it,
    /// ms: with the first ACK and the last, how the fan-out spreads.
    pub endpoint_half_ack_ms: Summary,
    /// Change counts and convergence by kind.
    pub changes: Changes,
    /// strait's RSS once ready, before any proxy, MB.
    pub strait_rss_before_proxies_mb: Option<f64>,
    /// strait's RSS once every proxy is configured, MB.
    pub strait_rss_connected_mb: Option<f64>,
    /// strait's largest sampled RSS, MB.
    pub strait_peak_rss_mb: Option<f64>,
    /// strait's peak RSS as the kernel recorded it (VmHWM), MB.
    pub strait_hwm_mb: Option<f64>,
    /// (RSS connected − RSS before proxies) / proxies, KB.
    pub strait_rss_per_proxy_kb: Option<f64>,
    /// strait's CPU seconds from the start of connecting to the end of the run.
    pub strait_cpu_seconds: Option<f64>,
    /// strait's CPU seconds until every proxy was configured.
    pub strait_cpu_initial_sync_seconds: Option<f64>,
    /// strait's CPU seconds in the idle window (no churn, every proxy configured).
    pub strait_steady_cpu_seconds: Option<f64>,
    /// Length of the idle window, s.
    pub steady_window_seconds: f64,
    /// strait's CPU seconds during churn (and its drain).
    pub strait_cpu_churn_seconds: Option<f64>,
    /// The harness's own CPU seconds over the same span as `strait_cpu_seconds`.
    pub load_cpu_seconds: f64,
    /// The harness's own CPU seconds during churn.
    pub load_cpu_churn_seconds: f64,
    /// CPU seconds used by other processes on the machine over the run (anything but strait
    /// and the harness: they compete for the same CPUs and distort the timings).
    pub other_cpu_seconds: f64,
    /// The same during churn.
    pub other_cpu_churn_seconds: f64,
    /// The harness's peak RSS, MB.
    pub load_peak_rss_mb: f64,
    /// The harness's `MIMALLOC_PURGE_DELAY`: "-1" (freed memory is kept, the default), or
    /// what the environment set; `None`: mimalloc's own default (freed memory goes back to
    /// the kernel after 1 s).
    pub load_mimalloc_purge_delay: Option<String>,
    /// Bytes of resources received by all proxies over the run, by type.
    pub bytes_sent: PerType,
    /// Responses received by all proxies over the run, by type.
    pub responses: PerType,
    /// During churn, per written change: responses received by all proxies, by type.
    pub responses_per_change: PerType,
    /// During churn, per written change: bytes received by all proxies, by type.
    pub bytes_per_change: PerType,
    /// strait's own counters over the churn phase.
    pub strait_churn_metrics: Option<StraitMetrics>,
    /// strait pushes per written change.
    pub strait_pushes_per_change: Option<f64>,
    /// NACKs the proxies sent.
    pub nacks_sent: u64,
    /// Streams reopened after a failure.
    pub reconnects: u64,
    /// Connection or stream failures.
    pub errors: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Length of the whole run, s.
    pub wall_seconds: f64,
    /// Each change (for plotting).
    pub outcomes: Vec<Outcome>,
}

/// Counters into the per-type maps of a report.
pub fn counters_per_change(c: &CounterSnapshot, changes: usize) -> (PerType, PerType) {
    (
        per_type(c.responses, changes as f64),
        per_type(c.bytes, changes as f64),
    )
}

fn opt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(x) => format!("{x:.1} {unit}"),
        None => "n/a".to_string(),
    }
}

fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mode = if self.delta { "Delta" } else { "SotW" };
        let _ = writeln!(
            t,
            "strait-load: {} services ({} at end), {} proxies, {mode}",
            self.services, self.services_at_end, self.proxies
        );
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<44} {v}");
        };
        row(
            "proxies configured",
            format!("{}/{}", self.proxies_synced, self.proxies),
        );
        row(
            "initial sync, all proxies",
            self.initial_sync_seconds
                .map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "n/a (not every proxy)".into()),
        );
        let s = &self.initial_sync_per_proxy_ms;
        row(
            "initial sync per proxy p50/p99/max",
            format!("{:.0} / {:.0} / {:.0} ms", s.p50, s.p99, s.max),
        );
        row(
            "initial bytes (CDS/EDS/LDS/RDS)",
            format!(
                "{} / {} / {} / {}",
                mb(self.initial_bytes.get("CDS").copied().unwrap_or_default()),
                mb(self.initial_bytes.get("EDS").copied().unwrap_or_default()),
                mb(self.initial_bytes.get("LDS").copied().unwrap_or_default()),
                mb(self.initial_bytes.get("RDS").copied().unwrap_or_default()),
            ),
        );
        let c = &self.convergence_ms;
        row(
            "convergence p50/p90/p99/max",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} ms ({} changes)",
                c.p50, c.p90, c.p99, c.max, c.count
            ),
        );
        row(
            "convergence p99 beyond debounce",
            format!("{:.0} ms", self.convergence_p99_beyond_debounce_ms),
        );
        let e = &self.endpoint_convergence_ms;
        row(
            "endpoint changes p50/p90/p99/max",
            format!(
                "{:.0} / {:.0} / {:.0} / {:.0} ms ({} changes); p99 beyond debounce {:.0} ms",
                e.p50, e.p90, e.p99, e.max, e.count, self.endpoint_p99_beyond_debounce_ms
            ),
        );
        let (f, h) = (&self.endpoint_first_ack_ms, &self.endpoint_half_ack_ms);
        row(
            "  first ACK / half the proxies p50, p99",
            format!("{:.0}, {:.0} / {:.0}, {:.0} ms", f.p50, f.p99, h.p50, h.p99),
        );
        for (kind, k) in &self.changes.by_kind {
            row(
                &format!("  {kind}"),
                format!(
                    "written {}, measured {}, timed out {}, unobservable {}; p50 {:.0} ms, p99 {:.0} ms",
                    k.written,
                    k.measured,
                    k.timed_out,
                    k.unobservable,
                    k.convergence_ms.p50,
                    k.convergence_ms.p99
                ),
            );
        }
        row(
            "strait RSS before proxies / connected",
            format!(
                "{} / {}",
                opt(self.strait_rss_before_proxies_mb, "MB"),
                opt(self.strait_rss_connected_mb, "MB")
            ),
        );
        row(
            "strait RSS peak (sampled / VmHWM)",
            format!(
                "{} / {}",
                opt(self.strait_peak_rss_mb, "MB"),
                opt(self.strait_hwm_mb, "MB")
            ),
        );
        row(
            "strait RSS per proxy",
            opt(self.strait_rss_per_proxy_kb, "KB"),
        );
        row(
            "strait CPU: total / initial sync / churn",
            format!(
                "{} / {} / {}",
                opt(self.strait_cpu_seconds, "s"),
                opt(self.strait_cpu_initial_sync_seconds, "s"),
                opt(self.strait_cpu_churn_seconds, "s")
            ),
        );
        row(
            &format!(
                "strait CPU idle ({:.0} s window)",
                self.steady_window_seconds
            ),
            match self.strait_steady_cpu_seconds {
                Some(x) => format!("{x:.2} s"),
                None => "n/a".to_string(),
            },
        );
        row(
            "load tool CPU: total / churn; peak RSS",
            format!(
                "{:.1} s / {:.1} s; {:.0} MB",
                self.load_cpu_seconds, self.load_cpu_churn_seconds, self.load_peak_rss_mb
            ),
        );
        let fmt_types = |m: &PerType, f: &dyn Fn(f64) -> String| {
            ["CDS", "EDS", "LDS", "RDS", "total"]
                .iter()
                .map(|k| format!("{k} {}", f(m.get(*k).copied().unwrap_or_default())))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(
            "responses",
            fmt_types(&self.responses, &|x| format!("{x:.0}")),
        );
        row("bytes", fmt_types(&self.bytes_sent, &|x| mb(x)));
        row(
            "per change: responses",
            fmt_types(&self.responses_per_change, &|x| format!("{x:.0}")),
        );
        row(
            "per change: bytes",
            fmt_types(&self.bytes_per_change, &|x| mb(x)),
        );
        if let Some(m) = &self.strait_churn_metrics {
            row(
                "strait pushes during churn; mean push",
                format!(
                    "{:.0} ({:.2}/change); {:.1} ms",
                    m.pushes,
                    self.strait_pushes_per_change.unwrap_or_default(),
                    m.push_seconds_mean * 1e3
                ),
            );
        }
        row(
            "other processes' CPU: total / churn",
            format!(
                "{:.1} s / {:.1} s",
                self.other_cpu_seconds, self.other_cpu_churn_seconds
            ),
        );
        row(
            "NACKs sent / reconnects / errors",
            format!(
                "{} / {} / {}",
                self.nacks_sent, self.reconnects, self.errors
            ),
        );
        if let Some(e) = &self.last_error {
            row("last error", e.clone());
        }
        row("wall time", format!("{:.1} s", self.wall_seconds));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_type_maps_and_change_counts() {
        let m = per_type([10, 20, 30, 40], 10.0);
        assert_eq!(m["CDS"], 1.0);
        assert_eq!(m["total"], 10.0);
        let mk = |id, kind, ms: Option<f64>, timed_out| Outcome {
            id,
            kind,
            converged_ms: ms,
            first_ack_ms: ms,
            half_ack_ms: ms,
            proxies_done: 1,
            required: 1,
            excused: 0,
            written_s: 0.0,
            timed_out,
        };
        let c = Changes::of(&[
            mk(1, ChangeKind::ScaleUp, Some(120.0), false),
            mk(2, ChangeKind::ScaleUp, None, true),
            mk(3, ChangeKind::ServiceLabel, None, false),
        ]);
        assert_eq!(
            (c.written, c.measured, c.timed_out, c.unobservable),
            (3, 1, 1, 1)
        );
        assert_eq!(c.by_kind["scale_up"].convergence_ms.max, 120.0);
        let r = Report {
            changes: c,
            ..Default::default()
        };
        assert!(r.table().contains("scale_up"));
        assert!(r.table().contains("endpoint changes p50/p90/p99/max"));
        assert!(r.table().contains("first ACK / half the proxies"));
        let json = serde_json::to_value(&r).expect("json");
        assert!(json["convergence_ms"]["p99"].is_number());
        assert!(json["endpoint_convergence_ms"]["p99"].is_number());
        assert!(json["endpoint_p99_beyond_debounce_ms"].is_number());
        assert!(json["endpoint_first_ack_ms"]["p50"].is_number());
        assert!(json["endpoint_half_ack_ms"]["p50"].is_number());
    }
}
