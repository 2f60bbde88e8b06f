//! Encoded resources and the per-proxy snapshot that the server streams.
//!
//! A [`Resource`] is encoded once (as a complete `google.protobuf.Any`) and shared by every
//! proxy that receives it. A [`TypeView`] is what one proxy should have of one type: a few
//! shared [`ResourceMap`] layers (for example the mesh-wide clusters plus the proxy's own
//! inbound clusters), so a proxy's snapshot costs a handful of pointers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use xxhash_rust::xxh3::Xxh3;

/// The resource types strait serves, in the order a push sends them (clusters before their
/// endpoints, listeners before their routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XdsType {
    /// CDS.
    Cluster,
    /// EDS.
    Endpoint,
    /// LDS.
    Listener,
    /// RDS.
    Route,
    /// SDS.
    Secret,
}

impl XdsType {
    /// Every type, in push order.
    pub const ALL: [XdsType; 5] = [
        XdsType::Cluster,
        XdsType::Endpoint,
        XdsType::Listener,
        XdsType::Route,
        XdsType::Secret,
    ];

    /// The v3 type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            XdsType::Cluster => strait_translate::CLUSTER_TYPE,
            XdsType::Endpoint => strait_translate::ENDPOINT_TYPE,
            XdsType::Listener => strait_translate::LISTENER_TYPE,
            XdsType::Route => strait_translate::ROUTE_TYPE,
            XdsType::Secret => strait_translate::SECRET_TYPE,
        }
    }

    /// Recognises a type URL.
    pub fn from_type_url(url: &str) -> Option<XdsType> {
        XdsType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The short name used in status and metrics (`CDS`, `EDS`, …).
    pub fn short(self) -> &'static str {
        match self {
            XdsType::Cluster => "CDS",
            XdsType::Endpoint => "EDS",
            XdsType::Listener => "LDS",
            XdsType::Route => "RDS",
            XdsType::Secret => "SDS",
        }
    }

    /// Types whose every response must carry the complete set (state-of-the-world CDS and
    /// LDS); the others may carry only what changed.
    pub fn is_wildcard_type(self) -> bool {
        matches!(self, XdsType::Cluster | XdsType::Listener)
    }

    /// Position in [`XdsType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One resource, encoded once.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// Its name.
    pub name: Arc<str>,
    /// Hash of its encoding: equal versions mean equal content.
    pub version: u64,
    /// The complete encoded `google.protobuf.Any` message.
    pub any: Bytes,
}

impl Resource {
    /// Encodes a message as a resource.
    pub fn encode<M: Message + prost::Name>(name: impl Into<Arc<str>>, msg: &M) -> Arc<Resource> {
        let any = strait_translate::util::any(msg);
        let bytes = Bytes::from(any.encode_to_vec());
        let version = xxhash_rust::xxh3::xxh3_64(&bytes);
        Arc::new(Resource {
            name: name.into(),
            version,
            any: bytes,
        })
    }

    /// The version as Envoy sees it.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }
}

/// A named set of resources of one type, shared between proxies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResourceMap {
    /// Hash of names and versions: equal versions mean equal content.
    pub version: u64,
    /// The resources by name.
    pub items: BTreeMap<Arc<str>, Arc<Resource>>,
    /// When built by patching another map: that map's version and the names that differ
    /// from it, so that followers can diff in O(changes).
    pub base: Option<(u64, Arc<[Arc<str>]>)>,
}

impl ResourceMap {
    /// Builds a map from resources.
    pub fn new(resources: impl IntoIterator<Item = Arc<Resource>>) -> Arc<ResourceMap> {
        let items: BTreeMap<_, _> = resources.into_iter().map(|r| (r.name.clone(), r)).collect();
        Arc::new(ResourceMap {
            version: hash_items(&items),
            items,
            base: None,
        })
    }

    /// Builds a map from `old` with some resources replaced or removed (`None`), recording
    /// the difference.
    pub fn patch(
        old: &ResourceMap,
        changes: impl IntoIterator<Item = (Arc<str>, Option<Arc<Resource>>)>,
    ) -> Arc<ResourceMap> {
        let mut items = old.items.clone();
        let mut changed: Vec<Arc<str>> = Vec::new();
        for (name, r) in changes {
            let differs = match (&r, old.items.get(&name)) {
                (Some(new), Some(prev)) => new.version != prev.version,
                (None, None) => false,
                _ => true,
            };
            if !differs {
                continue;
            }
            match r {
                Some(r) => items.insert(name.clone(), r),
                None => items.remove(&name),
            };
            changed.push(name);
        }
        Arc::new(ResourceMap {
            version: hash_items(&items),
            items,
            base: Some((old.version, changed.into())),
        })
    }

    /// An empty map.
    pub fn empty() -> Arc<ResourceMap> {
        ResourceMap::new(std::iter::empty())
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn hash_items(items: &BTreeMap<Arc<str>, Arc<Resource>>) -> u64 {
    let mut h = Xxh3::new();
    for (name, r) in items {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(&r.version.to_le_bytes());
    }
    h.digest()
}

/// What one proxy should have of one type: shared layers with disjoint names.
#[derive(Debug, Clone, Default)]
pub struct TypeView {
    /// The layers, most shared first.
    pub layers: Vec<Arc<ResourceMap>>,
}

/// What differs between two views.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ViewDiff {
    /// Names present in the new view with new content.
    pub changed: Vec<Arc<str>>,
    /// Names present in the old view only.
    pub removed: Vec<Arc<str>>,
}

impl TypeView {
    /// A view of these layers.
    pub fn new(layers: Vec<Arc<ResourceMap>>) -> Self {
        Self { layers }
    }

    /// The version of the whole view.
    pub fn version(&self) -> u64 {
        if let [only] = self.layers.as_slice() {
            return only.version;
        }
        let mut h = Xxh3::new();
        for l in &self.layers {
            h.update(&l.version.to_le_bytes());
        }
        h.digest()
    }

    /// The version as a string for `version_info`.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version())
    }

    /// Looks a resource up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.layers.iter().find_map(|l| l.items.get(name))
    }

    /// Every resource, layer by layer.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.layers.iter().flat_map(|l| l.items.values())
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.len()).sum()
    }

    /// True when the view holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when both views are made of the same layers (nothing to send).
    pub fn same_as(&self, other: &TypeView) -> bool {
        self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a.version == b.version)
    }

    /// What changed from `old` to `self`, in O(changes) when layers were patched from the
    /// old ones, else by comparing the layers that differ.
    pub fn diff(&self, old: &TypeView) -> ViewDiff {
        let mut candidates: Vec<Arc<str>> = Vec::new();
        let n = self.layers.len().max(old.layers.len());
        for i in 0..n {
            match (self.layers.get(i), old.layers.get(i)) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) || a.version == b.version => {}
                (Some(a), Some(b)) if a.base.as_ref().is_some_and(|(v, _)| *v == b.version) => {
                    if let Some((_, names)) = &a.base {
                        candidates.extend(names.iter().cloned());
                    }
                }
                (a, b) => {
                    candidates.extend(a.iter().flat_map(|m| m.items.keys().cloned()));
                    candidates.extend(b.iter().flat_map(|m| m.items.keys().cloned()));
                }
            }
        }
        candidates.sort();
        candidates.dedup();
        let mut out = ViewDiff::default();
        for name in candidates {
            match (self.get(&name), old.get(&name)) {
                (Some(new), Some(prev)) if new.version == prev.version => {}
                (Some(_), _) => out.changed.push(name),
                (None, Some(_)) => out.removed.push(name),
                (None, None) => {}
            }
        }
        out
    }
}

/// Everything one proxy should have, by type.
#[derive(Debug, Clone, Default)]
pub struct ProxySnapshot {
    /// The mesh snapshot version it was built from.
    pub version: u64,
    /// Views in [`XdsType::ALL`] order.
    pub views: [TypeView; 5],
}

impl ProxySnapshot {
    /// The view of one type.
    pub fn view(&self, t: XdsType) -> &TypeView {
        &self.views[t.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

    fn cla(name: &str, n: usize) -> Arc<Resource> {
        let mut c = ClusterLoadAssignment {
            cluster_name: name.to_string(),
            ..Default::default()
        };
        c.endpoints.resize(n, Default::default());
        Resource::encode(name, &c)
    }

    #[test]
    fn encoding_is_stable_and_versioned_by_content() {
        assert_eq!(cla("a", 1).version, cla("a", 1).version);
        assert_ne!(cla("a", 1).version, cla("a", 2).version);
    }

    #[test]
    fn patched_maps_diff_by_recorded_changes() {
        let m1 = ResourceMap::new([cla("a", 1), cla("b", 1), cla("c", 1)]);
        let m2 = ResourceMap::patch(
            &m1,
            [
                (Arc::from("b"), Some(cla("b", 2))),
                (Arc::from("c"), None),
                (Arc::from("a"), Some(cla("a", 1))),
                (Arc::from("d"), Some(cla("d", 1))),
            ],
        );
        let base = m2.base.as_ref().expect("patched");
        assert_eq!(base.0, m1.version);
        assert_eq!(base.1.len(), 3, "unchanged a is not recorded");
        let d = TypeView::new(vec![m2.clone()]).diff(&TypeView::new(vec![m1.clone()]));
        assert_eq!(d.changed, vec![Arc::from("b"), Arc::from("d")]);
        assert_eq!(d.removed, vec![Arc::from("c")]);
        // Unrelated maps diff by content.
        let m3 = ResourceMap::new([cla("a", 1), cla("b", 3)]);
        let d = TypeView::new(vec![m3]).diff(&TypeView::new(vec![m1]));
        assert_eq!(d.changed, vec![Arc::from("b")]);
        assert_eq!(d.removed, vec![Arc::from("c")]);
    }

    #[test]
    fn views_with_the_same_layers_are_the_same() {
        let m = ResourceMap::new([cla("a", 1)]);
        let own = ResourceMap::new([cla("x", 1)]);
        let v1 = TypeView::new(vec![m.clone(), own.clone()]);
        let v2 = TypeView::new(vec![m, own]);
        assert!(v1.same_as(&v2));
        assert_eq!(v1.version(), v2.version());
        assert_eq!(v1.len(), 2);
        assert!(v1.get("x").is_some());
        assert!(v1.diff(&v2) == ViewDiff::default());
    }
}
