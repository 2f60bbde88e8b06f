//! The labels, annotations, names and ports injection reads and writes.

pub use strait_api::labels::{ISTIO_INJECTION, ISTIO_REV, SIDECAR_INJECT, STRAIT_REV, STRAIT_TAG};
/// Annotation of injected pods: what was injected (JSON). Its presence makes injection
/// idempotent.
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";

/// Canonical service name label (Istio's telemetry and tools read it).
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// Canonical service revision label.
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// Which container `kubectl logs`/`exec` pick by default.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// Annotation: CPU request of the Envoy container.
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
/// Annotation: memory request of the Envoy container.
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
/// Annotation: CPU limit of the Envoy container.
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
/// Annotation: memory limit of the Envoy container.
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
/// Annotation: Envoy image of this pod.
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
/// Annotation: Envoy's log level.
pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
/// Annotation: Envoy's per-component log levels (`misc:error,upstream:debug`).
pub const COMPONENT_LOG_LEVEL: &str = "sidecar.istio.io/componentLogLevel";
/// Annotation: how traffic is captured (`REDIRECT`; `TPROXY` and `NONE` are refused).
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// Annotation: a `ProxyConfig` (YAML or JSON) overriding the mesh's `defaultConfig`.
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
/// Annotation: the port of Envoy's readiness listener (`0` disables probes).
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
/// Annotation: readiness probe initial delay.
pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
/// Annotation: readiness probe period.
pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
/// Annotation: readiness probe failure threshold.
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";

/// Annotation: inbound ports to capture (`*` for all, the default).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Annotation: inbound ports never captured.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Annotation: outbound destinations (CIDRs) to capture (`*` for all, the default).
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Annotation: outbound destinations (CIDRs) never captured.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Annotation: outbound ports always captured, whatever the destination.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// Annotation: outbound ports never captured.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

/// The Envoy container.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The init container.
pub const INIT_CONTAINER: &str = "strait-init";
/// The emptyDir shared by the init container and Envoy: bootstrap and the `strait` binary.
pub const ENVOY_VOLUME: &str = "strait-envoy";
/// The downward-API volume with the pod's labels and annotations.
pub const PODINFO_VOLUME: &str = "strait-podinfo";
/// Where the shared emptyDir is mounted.
pub const ENVOY_DIR: &str = "/etc/strait";
/// The bootstrap `strait init` writes.
pub const BOOTSTRAP_PATH: &str = "/etc/strait/envoy.json";
/// The copy of the `strait` binary Envoy's hooks run (`strait drain`, `strait wait`).
pub const STRAIT_COPY_PATH: &str = "/etc/strait/strait";
/// Where the downward-API volume is mounted in the init container.
pub const PODINFO_DIR: &str = "/etc/strait-podinfo";

/// The uid (and gid) Envoy runs as; its own traffic is never captured.
pub const PROXY_UID: u32 = 1337;
/// Envoy's admin port (on 127.0.0.1 only).
pub const ADMIN_PORT: u16 = 15000;
/// Where captured outbound traffic goes (`virtualOutbound`).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Where captured inbound traffic goes (`virtualInbound`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Envoy's readiness listener (`GET /healthz/ready`), probed by the kubelet.
pub const HEALTH_PORT: u16 = 15021;
/// Envoy's Prometheus listener (`GET /stats/prometheus`).
pub const STATS_PORT: u16 = 15090;
