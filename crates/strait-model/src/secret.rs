//! Secrets that Gateways and DestinationRules reference by `credentialName`.

use std::collections::BTreeMap;
use std::sync::Arc;

use strait_api::k8s_openapi::api::core::v1 as core;

/// A Secret's type and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// `kubernetes.io/tls`, `Opaque`, …
    pub type_: String,
    /// Decoded data by key (`tls.crt`, `tls.key`, `ca.crt`, `cert`, `key`, `cacert`).
    pub data: BTreeMap<String, Arc<[u8]>>,
}

impl Secret {
    /// From a Kubernetes Secret (`data` and `stringData`, the latter winning as the API
    /// server does).
    pub fn from_k8s(s: &core::Secret) -> Secret {
        let mut data: BTreeMap<String, Arc<[u8]>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), Arc::from(v.0.as_slice())))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), Arc::from(v.as_bytes()));
        }
        Secret {
            namespace: s.metadata.namespace.as_deref().unwrap_or_default().into(),
            name: s.metadata.name.as_deref().unwrap_or_default().into(),
            type_: s.type_.clone().unwrap_or_else(|| "Opaque".to_string()),
            data,
        }
    }

    /// The first present key among `keys`.
    pub fn get(&self, keys: &[&str]) -> Option<&Arc<[u8]>> {
        keys.iter().find_map(|k| self.data.get(*k))
    }
}
