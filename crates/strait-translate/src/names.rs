//! Resource names, in Istio's spelling so that existing dashboards and habits keep working.

/// `outbound|9080|v1|reviews.default.svc.cluster.local`.
pub fn outbound_cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|9080||`.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Parses an outbound cluster name into (port, subset, host).
pub fn parse_outbound_cluster(name: &str) -> Option<(u16, &str, &str)> {
    let mut it = name.splitn(4, '|');
    if it.next()? != "outbound" {
        return None;
    }
    let port = it.next()?.parse().ok()?;
    let subset = it.next()?;
    let host = it.next()?;
    Some((port, subset, host))
}

/// The catch-all cluster that passes traffic to its original destination.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The cluster that drops traffic.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// The inbound catch-all, for ports no service declares.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The outbound capture listener.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// The inbound capture listener.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// Port the outbound capture listener binds.
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
/// Port the inbound capture listener binds.
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;
/// Source address inbound passthrough traffic leaves from, so iptables lets it through.
pub const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_round_trip() {
        let n = outbound_cluster(9080, "v1", "reviews.default.svc.cluster.local");
        assert_eq!(n, "outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(
            parse_outbound_cluster(&n),
            Some((9080, "v1", "reviews.default.svc.cluster.local"))
        );
        assert_eq!(parse_outbound_cluster("inbound|80||"), None);
    }
}
