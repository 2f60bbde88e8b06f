//! Locality-aware load balancing, as Istio does it.
//!
//! * With outlier detection on a host (and locality load balancing not disabled), endpoints are
//!   put in failover priorities relative to the proxy's locality: same region/zone/subzone 0,
//!   same region/zone 1, same region 2, a `failover` target region next, the rest last. Or, with
//!   `failoverPriority`, by how many of the listed labels match the proxy's. Envoy moves
//!   traffic to the next priority as health drops, scaled by the overprovisioning factor
//!   (1.4: a locality at 50% health keeps 70% of the traffic).
//! * With `distribute`, a proxy whose locality matches `from` splits traffic between the
//!   localities matching `to` by the given weights (each weight shared equally by the
//!   localities its pattern matches); localities matching nothing get no traffic.
//!
//! A DestinationRule's `localityLbSetting` wins over the mesh's.

use strait_api::MeshConfig;
use strait_api::istio::{
    DestinationRuleSpec, LocalityDistribute, LocalityFailover, LocalityLoadBalancerSetting,
    TrafficPolicy,
};
use strait_model::{Labels, Locality};

/// Envoy's default overprovisioning factor, in percent.
pub const DEFAULT_OVERPROVISIONING: u32 = 140;

/// How a proxy's endpoints of one cluster are prioritised or weighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode<'a> {
    /// All endpoints equal.
    Off,
    /// Failover priorities.
    Failover {
        /// Region failover targets.
        failover: &'a [LocalityFailover],
        /// Label keys that order priorities instead of localities.
        priority_labels: &'a [String],
    },
    /// Fixed weights per locality.
    Distribute(&'a LocalityDistribute),
}

/// The proxy a load assignment is built for.
#[derive(Debug, Clone, Copy)]
pub struct ProxyLocality<'a> {
    /// Its locality.
    pub locality: &'a Locality,
    /// Its labels (for `failoverPriority`).
    pub labels: &'a Labels,
}

/// True when `pattern` (`region/zone/subzone`, each part possibly `*`, trailing parts
/// optional) matches a locality.
pub fn matches(pattern: &str, l: &Locality) -> bool {
    let parts = [l.region.as_str(), l.zone.as_str(), l.subzone.as_str()];
    pattern
        .split('/')
        .zip(parts)
        .all(|(p, v)| p == "*" || p == v)
}

/// The locality setting in force for a cluster with `policy`: the DestinationRule's, else the
/// mesh's; `None` when there is none or it is disabled.
pub fn setting<'a>(
    policy: Option<&'a TrafficPolicy>,
    mesh: &'a MeshConfig,
) -> Option<&'a LocalityLoadBalancerSetting> {
    let lb = policy.and_then(|p| p.load_balancer.as_ref());
    let own = lb.and_then(|l| l.locality_lb_setting.as_ref());
    let s = own.or(mesh.locality_lb_setting.as_ref())?;
    (s.enabled != Some(false)).then_some(s)
}

/// True when a cluster with `policy` balances by locality weights (`distribute`), whatever
/// the proxy. Consistent hashing ignores locality weights, so those clusters never do.
pub fn weighted(policy: Option<&TrafficPolicy>, mesh: &MeshConfig) -> bool {
    let hashing = policy
        .and_then(|p| p.load_balancer.as_ref())
        .is_some_and(|l| l.consistent_hash.is_some());
    !hashing && setting(policy, mesh).is_some_and(|s| !s.distribute.is_empty())
}

/// The mode for a cluster with `policy`, seen from `proxy`.
pub fn mode<'a>(policy: &'a TrafficPolicy, mesh: &'a MeshConfig, proxy: &Locality) -> Mode<'a> {
    if proxy.is_empty() {
        return Mode::Off;
    }
    let setting = setting(Some(policy), mesh);
    if let Some(s) = setting
        && !s.distribute.is_empty()
    {
        if !weighted(Some(policy), mesh) {
            return Mode::Off;
        }
        return match s.distribute.iter().find(|d| matches(&d.from, proxy)) {
            Some(d) => Mode::Distribute(d),
            None => Mode::Off,
        };
    }
    if policy.outlier_detection.is_none() {
        return Mode::Off;
    }
    Mode::Failover {
        failover: setting.map(|s| s.failover.as_slice()).unwrap_or_default(),
        priority_labels: setting
            .map(|s| s.failover_priority.as_slice())
            .unwrap_or_default(),
    }
}

fn topology_label<'a>(key: &str, l: &'a Locality) -> Option<&'a str> {
    match key {
        "topology.kubernetes.io/region" => Some(&l.region),
        "topology.kubernetes.io/zone" => Some(&l.zone),
        "topology.istio.io/subzone" => Some(&l.subzone),
        _ => None,
    }
}

/// The failover priority of an endpoint (`Mode::Failover` only).
pub fn priority(
    mode: &Mode<'_>,
    proxy: &ProxyLocality<'_>,
    ep_locality: &Locality,
    ep_labels: &Labels,
) -> u32 {
    let Mode::Failover {
        failover,
        priority_labels,
    } = mode
    else {
        return 0;
    };
    if !priority_labels.is_empty() {
        // Endpoints matching all labels first, then all but the last, and so on.
        let value = |key: &str, labels: &Labels, l: &Locality| -> Option<String> {
            labels
                .get(key)
                .cloned()
                .or_else(|| topology_label(key, l).map(str::to_string))
        };
        let matched = priority_labels
            .iter()
            .take_while(|k| {
                let mine = value(k, proxy.labels, proxy.locality);
                mine.is_some() && mine == value(k, ep_labels, ep_locality)
            })
            .count();
        return (priority_labels.len() - matched) as u32;
    }
    let p = proxy.locality;
    if p.region == ep_locality.region {
        if p.zone == ep_locality.zone {
            return if p.subzone == ep_locality.subzone {
                0
            } else {
                1
            };
        }
        return 2;
    }
    if failover.is_empty() {
        return 3;
    }
    if failover
        .iter()
        .any(|f| f.from == p.region && f.to == ep_locality.region)
    {
        3
    } else {
        4
    }
}

/// The weight of an endpoint locality under `Mode::Distribute`, given every locality of the
/// cluster; `None` means it takes no traffic.
pub fn weight(d: &LocalityDistribute, l: &Locality, all: &[&Locality]) -> Option<u32> {
    let (pattern, w) = d.to.iter().find(|(pattern, _)| matches(pattern, l))?;
    let sharing = all.iter().filter(|x| matches(pattern, x)).count().max(1) as u32;
    let share = *w / sharing;
    (share > 0).then_some(share)
}

/// The overprovisioning factor of the mesh, in percent.
pub fn overprovisioning(mesh: &MeshConfig) -> u32 {
    mesh.overprovisioning_factor
        .filter(|f| *f >= 1.0)
        .map(|f| (f * 100.0).round() as u32)
        .unwrap_or(DEFAULT_OVERPROVISIONING)
}

/// True when the endpoints of a service with rule `dr` can depend on the proxy's locality.
pub fn service_sensitive(dr: Option<&DestinationRuleSpec>, mesh: &MeshConfig) -> bool {
    if mesh
        .locality_lb_setting
        .as_ref()
        .is_some_and(|s| !s.distribute.is_empty())
    {
        return true;
    }
    let Some(dr) = dr else {
        return false;
    };
    let policies = dr
        .traffic_policy
        .iter()
        .chain(dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
    policies.into_iter().any(|p| {
        p.outlier_detection.is_some()
            || p.load_balancer
                .as_ref()
                .is_some_and(|l| l.locality_lb_setting.is_some())
            || p.port_level_settings.iter().any(|pl| {
                pl.outlier_detection.is_some()
                    || pl
                        .load_balancer
                        .as_ref()
                        .is_some_and(|l| l.locality_lb_setting.is_some())
            })
    })
}

/// The proxy label keys that `failoverPriority` settings order by (other than topology
/// labels, which come from the proxy's locality).
pub fn priority_label_keys(snap: &strait_model::MeshSnapshot) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut add = |s: &LocalityLoadBalancerSetting| {
        for k in &s.failover_priority {
            let topology = topology_label(k, &Locality::default()).is_some();
            if !topology && !keys.iter().any(|x| x == k) {
                keys.push(k.to_string());
            }
        }
    };
    if let Some(s) = &snap.mesh.locality_lb_setting {
        add(s);
    }
    for dr in snap.config.destination_rules.values() {
        let spec = &dr.spec;
        let policies = spec.traffic_policy.iter().chain(
            spec.subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref()),
        );
        for p in policies {
            let lbs = p.load_balancer.iter().chain(
                p.port_level_settings
                    .iter()
                    .filter_map(|pl| pl.load_balancer.as_ref()),
            );
            for lb in lbs {
                if let Some(s) = &lb.locality_lb_setting {
                    add(s);
                }
            }
        }
    }
    keys.sort();
    keys
}

/// True when some config could make endpoints depend on the proxy's locality.
pub fn locality_sensitive(snap: &strait_model::MeshSnapshot) -> bool {
    service_sensitive(None, &snap.mesh)
        || snap
            .config
            .destination_rules
            .values()
            .any(|dr| service_sensitive(Some(&dr.spec), &snap.mesh))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        Locality::parse(s)
    }

    #[test]
    fn patterns() {
        assert!(matches("us-east/*", &loc("us-east/a/x")));
        assert!(matches("us-east", &loc("us-east/a/x")));
        assert!(matches("us-east/a/*", &loc("us-east/a/x")));
        assert!(!matches("us-east/b/*", &loc("us-east/a/x")));
        assert!(matches("*", &loc("eu/b")));
    }

    #[test]
    fn failover_priorities() {
        let proxy = loc("us-east/a/x");
        let labels = Labels::new();
        let p = ProxyLocality {
            locality: &proxy,
            labels: &labels,
        };
        let none = Mode::Failover {
            failover: &[],
            priority_labels: &[],
        };
        let pr = |m: &Mode<'_>, l: &str| priority(m, &p, &loc(l), &Labels::new());
        assert_eq!(pr(&none, "us-east/a/x"), 0);
        assert_eq!(pr(&none, "us-east/a/y"), 1);
        assert_eq!(pr(&none, "us-east/b/x"), 2);
        assert_eq!(pr(&none, "eu/a/x"), 3);
        let fo = [LocalityFailover {
            from: "us-east".into(),
            to: "us-west".into(),
        }];
        let with = Mode::Failover {
            failover: &fo,
            priority_labels: &[],
        };
        assert_eq!(pr(&with, "us-west/c"), 3);
        assert_eq!(pr(&with, "eu/c"), 4);
    }

    #[test]
    fn label_priorities() {
        let proxy = loc("r/z");
        let labels: Labels = [("net".to_string(), "n1".to_string())]
            .into_iter()
            .collect();
        let p = ProxyLocality {
            locality: &proxy,
            labels: &labels,
        };
        let keys = vec!["net".to_string(), "topology.kubernetes.io/zone".to_string()];
        let m = Mode::Failover {
            failover: &[],
            priority_labels: &keys,
        };
        let ep = |net: &str, l: &str| {
            let lb: Labels = [("net".to_string(), net.to_string())].into_iter().collect();
            priority(&m, &p, &loc(l), &lb)
        };
        assert_eq!(ep("n1", "r/z"), 0);
        assert_eq!(ep("n1", "r/other"), 1);
        assert_eq!(ep("n2", "r/z"), 2);
    }

    #[test]
    fn distribute_weights() {
        let d = LocalityDistribute {
            from: "us-east/*".into(),
            to: [
                ("us-east/a/*".to_string(), 80),
                ("us-west/*".to_string(), 20),
            ]
            .into_iter()
            .collect(),
        };
        let (a, w1, w2, eu) = (
            loc("us-east/a"),
            loc("us-west/b"),
            loc("us-west/c"),
            loc("eu/x"),
        );
        let all = [&a, &w1, &w2, &eu];
        assert_eq!(weight(&d, &a, &all), Some(80));
        assert_eq!(weight(&d, &w1, &all), Some(10));
        assert_eq!(weight(&d, &eu, &all), None);
    }

    #[test]
    fn factor() {
        assert_eq!(overprovisioning(&MeshConfig::default()), 140);
        let m = MeshConfig {
            overprovisioning_factor: Some(1.0),
            ..Default::default()
        };
        assert_eq!(overprovisioning(&m), 100);
    }
}
