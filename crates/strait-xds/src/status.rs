//! Delivery state as data: what was sent to each connected proxy, what it acknowledged, and
//! what it rejected. Read by `/debug/syncz` and `strait proxy-status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::resource::XdsType;

/// How far a proxy is with one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    /// It acknowledged the last response.
    Synced,
    /// Nothing was sent (not subscribed, or nothing to send yet).
    NotSent,
    /// A response is not acknowledged yet.
    Stale,
    /// It rejected the last response.
    Nacked,
}

impl SyncState {
    /// The label `proxy-status` prints.
    pub fn label(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::NotSent => "NOT SENT",
            SyncState::Stale => "STALE",
            SyncState::Nacked => "NACKED",
        }
    }
}

/// A rejected response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The version that was rejected.
    pub version: String,
    /// Envoy's error text.
    pub message: String,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

/// Delivery state of one type on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// The proxy asked for this type.
    pub subscribed: bool,
    /// Version of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Version the proxy last acknowledged.
    pub acked_version: Option<String>,
    /// Nonce it last acknowledged.
    pub acked_nonce: Option<String>,
    /// The last rejection, kept until a later response is acknowledged.
    pub nack: Option<Nack>,
    /// Responses sent on this connection.
    pub responses: u64,
    /// Resources the proxy should hold now.
    pub resources: usize,
}

impl TypeStatus {
    /// The summary `proxy-status` shows.
    pub fn state(&self) -> SyncState {
        match (&self.sent_nonce, &self.nack) {
            (None, _) => SyncState::NotSent,
            (Some(n), Some(nack)) if nack.nonce == *n => SyncState::Nacked,
            (Some(n), _) if self.acked_nonce.as_ref() == Some(n) => SyncState::Synced,
            _ => SyncState::Stale,
        }
    }
}

/// One connected proxy.
#[derive(Debug)]
pub struct ConnectionStatus {
    /// Connection number, unique in this process.
    pub conn: u64,
    /// The node id.
    pub proxy_id: Arc<str>,
    /// Envoy's version.
    pub envoy_version: Option<String>,
    /// Incremental (Delta) or state of the world.
    pub delta: bool,
    /// Peer address.
    pub peer: Option<String>,
    /// The revision tag it was injected through, if any.
    pub tag: Option<Arc<str>>,
    /// Connected since (seconds since the Unix epoch).
    pub connected_at: u64,
    types: Mutex<[TypeStatus; 5]>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl ConnectionStatus {
    /// Updates one type's status.
    pub fn update(&self, t: XdsType, f: impl FnOnce(&mut TypeStatus)) {
        f(&mut lock(&self.types)[t.index()]);
    }

    /// A copy of every type's status.
    pub fn types(&self) -> [TypeStatus; 5] {
        lock(&self.types).clone()
    }
}

/// Serialised form of one connection for `/debug/syncz`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ProxySyncz {
    /// Node id.
    pub proxy: String,
    /// Envoy version.
    pub envoy_version: Option<String>,
    /// Delta or SotW.
    pub delta: bool,
    /// Peer address.
    pub peer: Option<String>,
    /// The revision tag it follows (injected through), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Connected since.
    pub connected_at: u64,
    /// By short type name (`CDS`…): status, versions, nonces, NACK text.
    pub types: BTreeMap<String, TypeSyncz>,
}

/// Serialised form of one type's status.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TypeSyncz {
    /// SYNCED, NOT_SENT, STALE or NACKED.
    pub state: String,
    /// Version of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Version acknowledged.
    pub acked_version: Option<String>,
    /// Envoy's error text of the last rejection.
    pub nack: Option<String>,
    /// Resources the proxy should hold.
    pub resources: usize,
    /// Responses sent on this connection.
    pub responses: u64,
}

/// The document `/debug/syncz` serves.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Syncz {
    /// Who serves it (`strait-<revision>@<host>`).
    pub control_plane: String,
    /// The control plane's revision.
    pub revision: String,
    /// Mesh snapshot version last pushed.
    pub mesh_version: u64,
    /// Connected proxies, by id.
    pub proxies: Vec<ProxySyncz>,
}

/// All connections' delivery state.
#[derive(Debug)]
pub struct SyncRegistry {
    control_plane: Arc<str>,
    revision: String,
    conns: Mutex<BTreeMap<u64, Arc<ConnectionStatus>>>,
    next_conn: std::sync::atomic::AtomicU64,
    mesh_version: std::sync::atomic::AtomicU64,
}

impl SyncRegistry {
    /// An empty registry for the control plane `control_plane` of `revision`.
    pub fn new(control_plane: impl Into<Arc<str>>, revision: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            control_plane: control_plane.into(),
            revision: revision.into(),
            conns: Mutex::new(BTreeMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(1),
            mesh_version: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The control plane identifier sent to proxies.
    pub fn control_plane(&self) -> &Arc<str> {
        &self.control_plane
    }

    /// Records a new connection.
    pub fn connect(
        &self,
        proxy_id: Arc<str>,
        envoy_version: Option<String>,
        delta: bool,
        peer: Option<String>,
        tag: Option<Arc<str>>,
    ) -> Arc<ConnectionStatus> {
        let conn = self
            .next_conn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let c = Arc::new(ConnectionStatus {
            conn,
            proxy_id,
            envoy_version,
            delta,
            peer,
            tag,
            connected_at: now_secs(),
            types: Mutex::new(Default::default()),
        });
        lock(&self.conns).insert(conn, c.clone());
        c
    }

    /// Forgets a connection.
    pub fn disconnect(&self, conn: u64) {
        lock(&self.conns).remove(&conn);
    }

    /// The connections of proxies that follow a revision tag, in connection order.
    pub fn tagged_connections(&self) -> Vec<Arc<ConnectionStatus>> {
        lock(&self.conns)
            .values()
            .filter(|c| c.tag.is_some())
            .cloned()
            .collect()
    }

    /// Number of connected proxies.
    pub fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    /// True when no proxy is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the mesh version last pushed.
    pub fn set_mesh_version(&self, v: u64) {
        self.mesh_version
            .store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// The current delivery state of every connection.
    pub fn syncz(&self) -> Syncz {
        let conns: Vec<Arc<ConnectionStatus>> = lock(&self.conns).values().cloned().collect();
        let mut proxies: Vec<ProxySyncz> = conns
            .iter()
            .map(|c| {
                let types = c.types();
                ProxySyncz {
                    proxy: c.proxy_id.to_string(),
                    envoy_version: c.envoy_version.clone(),
                    delta: c.delta,
                    peer: c.peer.clone(),
                    tag: c.tag.as_deref().map(str::to_string),
                    connected_at: c.connected_at,
                    types: XdsType::ALL
                        .iter()
                        .map(|t| {
                            let s = &types[t.index()];
                            (
                                t.short().to_string(),
                                TypeSyncz {
                                    state: s.state().label().replace(' ', "_"),
                                    sent_version: s.sent_version.clone(),
                                    sent_nonce: s.sent_nonce.clone(),
                                    acked_version: s.acked_version.clone(),
                                    nack: s.nack.as_ref().map(|n| n.message.clone()),
                                    resources: s.resources,
                                    responses: s.responses,
                                },
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        proxies.sort_by(|a, b| a.proxy.cmp(&b.proxy));
        Syncz {
            control_plane: self.control_plane.to_string(),
            revision: self.revision.clone(),
            mesh_version: self.mesh_version.load(std::sync::atomic::Ordering::Relaxed),
            proxies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        let mut s = TypeStatus::default();
        assert_eq!(s.state(), SyncState::NotSent);
        s.sent_nonce = Some("1".into());
        assert_eq!(s.state(), SyncState::Stale);
        s.acked_nonce = Some("1".into());
        assert_eq!(s.state(), SyncState::Synced);
        s.sent_nonce = Some("2".into());
        s.nack = Some(Nack {
            nonce: "2".into(),
            version: "v".into(),
            message: "bad".into(),
            at: 0,
        });
        assert_eq!(s.state(), SyncState::Nacked);
    }

    #[test]
    fn registry_lists_connections() {
        let r = SyncRegistry::new("strait-default@test", "default");
        let c = r.connect(
            "sidecar~1.2.3.4~a.b~b.svc.cluster.local".into(),
            Some("1.40.0".into()),
            false,
            None,
            None,
        );
        c.update(XdsType::Cluster, |s| {
            s.subscribed = true;
            s.sent_nonce = Some("1".into());
            s.acked_nonce = Some("1".into());
        });
        let z = r.syncz();
        assert_eq!(z.proxies.len(), 1);
        assert_eq!(z.proxies[0].types["CDS"].state, "SYNCED");
        assert_eq!(z.proxies[0].types["EDS"].state, "NOT_SENT");
        r.disconnect(c.conn);
        assert!(r.is_empty());
    }
}
