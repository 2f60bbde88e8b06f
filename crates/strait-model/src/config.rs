//! The Istio networking objects in force, by kind.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use strait_api::istio::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService};
use strait_api::policy::LocalRateLimit;

/// Namespace and name of a config object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ConfigKey {
    /// Builds a key.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Config objects by kind; each map is shared between snapshots until it changes.
#[derive(Debug, Clone, Default)]
pub struct ConfigStore {
    /// VirtualServices.
    pub virtual_services: Arc<BTreeMap<ConfigKey, Arc<VirtualService>>>,
    /// DestinationRules.
    pub destination_rules: Arc<BTreeMap<ConfigKey, Arc<DestinationRule>>>,
    /// Gateways.
    pub gateways: Arc<BTreeMap<ConfigKey, Arc<Gateway>>>,
    /// ServiceEntries.
    pub service_entries: Arc<BTreeMap<ConfigKey, Arc<ServiceEntry>>>,
    /// Sidecars.
    pub sidecars: Arc<BTreeMap<ConfigKey, Arc<Sidecar>>>,
    /// LocalRateLimits (strait's own kind).
    pub local_rate_limits: Arc<BTreeMap<ConfigKey, Arc<LocalRateLimit>>>,
}

impl ConfigStore {
    /// Number of objects over all kinds.
    pub fn len(&self) -> usize {
        self.virtual_services.len()
            + self.destination_rules.len()
            + self.gateways.len()
            + self.service_entries.len()
            + self.sidecars.len()
            + self.local_rate_limits.len()
    }

    /// True when no config object exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
