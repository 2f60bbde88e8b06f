//! Encoded resources and the per-proxy snapshot that the server streams.
//!
//! A [`Resource`] is encoded once (as a complete `google.protobuf.Any`) and shared by every
//! proxy that receives it. A [`TypeView`] is what one proxy should have of one type: a few
//! shared [`ResourceMap`] layers (for example the mesh-wide clusters plus the proxy's own
//! inbound clusters), so a proxy's snapshot costs a handful of pointers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

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

    /// The version as Envoy sees it: [`Resource::VERSION_LEN`] hexadecimal digits.
    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }

    /// Length of [`Resource::version_string`].
    pub const VERSION_LEN: usize = 16;
}

/// A named set of resources of one type, shared between proxies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResourceMap {
    /// Hash of names and versions: equal versions mean equal content.
    pub version: u64,
    /// The resources by name.
    pub items: BTreeMap<Arc<str>, Arc<Resource>>,
    /// When built by patching: the versions this map was patched from, oldest first, each
    /// with the names that changed since it, so that a proxy holding any recent version can
    /// diff in O(changes) even when it skipped some.
    pub history: Vec<(u64, Arc<[Arc<str>]>)>,
}

/// How many patch steps a map remembers.
const HISTORY: usize = 16;

impl ResourceMap {
    /// Builds a map from resources.
    pub fn new(resources: impl IntoIterator<Item = Arc<Resource>>) -> Arc<ResourceMap> {
        let items: BTreeMap<_, _> = resources.into_iter().map(|r| (r.name.clone(), r)).collect();
        Arc::new(ResourceMap {
            version: hash_items(&items),
            items,
            history: Vec::new(),
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
        let changed: Arc<[Arc<str>]> = changed.into();
        // Each remembered version's changes grow by this step's.
        let skip = (old.history.len() + 1).saturating_sub(HISTORY);
        let mut history: Vec<(u64, Arc<[Arc<str>]>)> = old
            .history
            .iter()
            .skip(skip)
            .map(|(v, names)| {
                let mut all: Vec<Arc<str>> = names.iter().chain(changed.iter()).cloned().collect();
                all.sort();
                all.dedup();
                (*v, all.into())
            })
            .collect();
        history.push((old.version, changed));
        Arc::new(ResourceMap {
            version: hash_items(&items),
            items,
            history,
        })
    }

    /// The names that differ between `old` and this map, when this map was patched from it
    /// recently.
    pub fn changes_since(&self, old: u64) -> Option<&Arc<[Arc<str>]>> {
        self.history
            .iter()
            .rev()
            .find(|(v, _)| *v == old)
            .map(|(_, names)| names)
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

    /// Looks a resource up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.items.get(name)
    }

    /// Every resource, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.items.values()
    }
}

/// Remembered walks, by (newer, older) map version.
type Walks = HashMap<(u64, u64), Arc<[Arc<str>]>>;

/// Names that differ between two maps (present in one only, or with other content), sorted.
/// From the newer map's history when it has the older one, else by walking both in order;
/// walks are remembered for the next proxies that hold the same pair.
pub fn layer_changes(new: &ResourceMap, old: &ResourceMap) -> Arc<[Arc<str>]> {
    if new.version == old.version && new.items.len() == old.items.len() {
        return Arc::from(Vec::new());
    }
    if let Some(names) = new.changes_since(old.version) {
        return names.clone();
    }
    let key = (new.version, old.version);
    static WALKS: Mutex<Option<Walks>> = Mutex::new(None);
    if let Some(found) = WALKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(&key).cloned())
    {
        return found;
    }
    let mut out: Vec<Arc<str>> = Vec::new();
    let (mut a, mut b) = (new.items.iter().peekable(), old.items.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((na, _)), None) => {
                out.push((*na).clone());
                a.next();
            }
            (None, Some((nb, _))) => {
                out.push((*nb).clone());
                b.next();
            }
            (Some((na, ra)), Some((nb, rb))) => match na.cmp(nb) {
                std::cmp::Ordering::Less => {
                    out.push((*na).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push((*nb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if ra.version != rb.version {
                        out.push((*na).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    let out: Arc<[Arc<str>]> = out.into();
    let mut guard = WALKS.lock().unwrap_or_else(PoisonError::into_inner);
    let m = guard.get_or_insert_with(HashMap::new);
    // A handful of map pairs are in flight at a time; forget old ones wholesale.
    if m.len() >= 64 {
        m.clear();
    }
    m.insert(key, out.clone());
    out
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
    /// old ones, else by comparing the layers that differ (once for every proxy holding the
    /// same pair, see [`layer_changes`]).
    pub fn diff(&self, old: &TypeView) -> ViewDiff {
        let mut candidates: Vec<Arc<str>> = Vec::new();
        let n = self.layers.len().max(old.layers.len());
        let empty = ResourceMap::default();
        for i in 0..n {
            let a = self.layers.get(i).map_or(&empty, |a| &**a);
            let b = old.layers.get(i).map_or(&empty, |b| &**b);
            if a.version != b.version || (a.items.len() != b.items.len()) {
                candidates.extend(layer_changes(a, b).iter().cloned());
            }
        }
        if n > 1 {
            candidates.sort();
            candidates.dedup();
        }
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
        let since = m2.changes_since(m1.version).expect("patched");
        assert_eq!(since.len(), 3, "unchanged a is not recorded");
        let d = TypeView::new(vec![m2.clone()]).diff(&TypeView::new(vec![m1.clone()]));
        assert_eq!(d.changed, vec![Arc::from("b"), Arc::from("d")]);
        assert_eq!(d.removed, vec![Arc::from("c")]);
        // Unrelated maps diff by content.
        let m3 = ResourceMap::new([cla("a", 1), cla("b", 3)]);
        let d = TypeView::new(vec![m3]).diff(&TypeView::new(vec![m1]));
        assert_eq!(d.changed, vec![Arc::from("b")]);
        assert_eq!(d.removed, vec![Arc::from("c")]);
    }

    /// A proxy that skipped versions still diffs by the recorded changes, and a diff by walk
    /// finds exactly what differs.
    #[test]
    fn diffs_across_several_patches_and_by_walk() {
        let m1 = ResourceMap::new([cla("a", 1), cla("b", 1), cla("c", 1)]);
        let m2 = ResourceMap::patch(&m1, [(Arc::from("a"), Some(cla("a", 2)))]);
        let m3 = ResourceMap::patch(&m2, [(Arc::from("c"), None)]);
        let m4 = ResourceMap::patch(&m3, [(Arc::from("e"), Some(cla("e", 1)))]);
        assert_eq!(m4.changes_since(m1.version).map(|n| n.len()), Some(3));
        assert_eq!(m4.changes_since(m3.version).map(|n| n.len()), Some(1));
        let d = TypeView::new(vec![m4.clone()]).diff(&TypeView::new(vec![m1.clone()]));
        assert_eq!(d.changed, vec![Arc::from("a"), Arc::from("e")]);
        assert_eq!(d.removed, vec![Arc::from("c")]);
        // The same maps rebuilt from scratch diff by walking them.
        let fresh = ResourceMap::new(m4.items.values().cloned());
        assert_eq!(
            layer_changes(&fresh, &m1).to_vec(),
            vec![Arc::from("a"), Arc::from("c"), Arc::from("e")]
        );
        assert!(layer_changes(&fresh, &m4).is_empty());
        // History is bounded.
        let mut m = m1.clone();
        for i in 0..40 {
            m = ResourceMap::patch(&m, [(Arc::from("a"), Some(cla("a", i + 3)))]);
        }
        assert_eq!(m.history.len(), HISTORY);
        assert!(m.changes_since(m1.version).is_none());
        let d = TypeView::new(vec![m]).diff(&TypeView::new(vec![m1]));
        assert_eq!(d.changed, vec![Arc::from("a")]);
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
