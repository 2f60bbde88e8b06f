//! Prometheus metrics of delivery.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels by resource type.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// CDS, EDS, LDS, RDS or SDS.
    pub r#type: &'static str,
}

/// Counters and gauges of the xDS server and push controller.
#[derive(Debug)]
pub struct XdsMetrics {
    /// Connected proxies.
    pub connected: Gauge,
    /// Responses sent, by type.
    pub responses: Family<TypeLabel, Counter>,
    /// Resource bytes sent, by type.
    pub bytes: Family<TypeLabel, Counter>,
    /// Rejections received, by type.
    pub nacks: Family<TypeLabel, Counter>,
    /// Mesh pushes (debounced batches of changes).
    pub pushes: Counter,
    /// Seconds to build a push for every connected proxy.
    pub push_seconds: Histogram,
    /// Config objects refused by validation.
    pub rejected_objects: Counter,
    /// Seconds a large push waited for room in the push window before it went out.
    pub window_wait_seconds: Histogram,
}

impl XdsMetrics {
    /// Creates the metrics and registers them under `strait_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = XdsMetrics {
            connected: Gauge::default(),
            responses: Family::default(),
            bytes: Family::default(),
            nacks: Family::default(),
            pushes: Counter::default(),
            push_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            rejected_objects: Counter::default(),
            window_wait_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        registry.register(
            "strait_xds_connected_proxies",
            "Proxies connected over ADS",
            m.connected.clone(),
        );
        registry.register(
            "strait_xds_responses",
            "Discovery responses sent, by type",
            m.responses.clone(),
        );
        registry.register(
            "strait_xds_response_bytes",
            "Resource bytes sent, by type",
            m.bytes.clone(),
        );
        registry.register(
            "strait_xds_nacks",
            "Responses rejected by proxies, by type",
            m.nacks.clone(),
        );
        registry.register(
            "strait_pushes",
            "Pushes of mesh changes to proxies",
            m.pushes.clone(),
        );
        registry.register(
            "strait_push_duration_seconds",
            "Time to build a push for all connected proxies",
            m.push_seconds.clone(),
        );
        registry.register(
            "strait_config_rejected_objects",
            "Config objects refused by validation",
            m.rejected_objects.clone(),
        );
        registry.register(
            "strait_xds_push_window_wait_seconds",
            "Time a large cluster, listener or route push waited for room in the push window",
            m.window_wait_seconds.clone(),
        );
        Arc::new(m)
    }

    /// Records a response.
    pub fn response(&self, t: crate::XdsType, bytes: usize) {
        let l = TypeLabel { r#type: t.short() };
        self.responses.get_or_create(&l).inc();
        self.bytes.get_or_create(&l).inc_by(bytes as u64);
    }

    /// Records a rejection.
    pub fn nack(&self, t: crate::XdsType) {
        self.nacks
            .get_or_create(&TypeLabel { r#type: t.short() })
            .inc();
    }
}
