//! The tasks of one cluster: a supervisor that discovers what to watch, starts one watcher
//! per kind, reports the cluster synced once every watcher has delivered its first list, and
//! looks again for Istio kinds the API server did not serve; and the watchers themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, core::ApiResource};
use strait_api::Kind;
use strait_model::{ClusterEvent, ClusterId, Event};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, instrument, warn};

use super::KubeOptions;
use super::backoff::Backoff;
use super::convert::KindWatch;
use super::discovery::{Discovered, api_resource, config_kinds, config_versions, discover};
use super::status::ClusterReporter;

/// What every task of one cluster shares.
pub(crate) struct Shared {
    pub(crate) cluster: ClusterId,
    pub(crate) client: Client,
    pub(crate) opts: Arc<KubeOptions>,
    pub(crate) tx: mpsc::Sender<ClusterEvent>,
    pub(crate) reporter: ClusterReporter,
    /// The cluster's initial state must be complete before the first push (the first
    /// cluster); other clusters get `sync_timeout` and are then served without.
    pub(crate) primary: bool,
}

impl Shared {
    fn backoff(&self) -> Backoff {
        Backoff::new(
            self.opts.backoff_min,
            self.opts.backoff_max,
            self.opts.backoff_reset,
        )
    }

    async fn send(&self, event: Event) -> bool {
        self.tx
            .send(ClusterEvent::new(self.cluster.clone(), event))
            .await
            .is_ok()
    }
}

/// One watch: a kind, the version it is served in, and the scope.
#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    version: String,
    namespace: Option<String>,
    fields: Option<String>,
}

/// Secrets of these types never hold certificates for gateways or destination rules, and can
/// be large (Helm keeps every release in one); the API server leaves them out.
const SECRET_FIELD_SELECTOR: &str = "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token,type!=bootstrap.kubernetes.io/token,type!=kubernetes.io/dockerconfigjson,type!=kubernetes.io/dockercfg";

fn targets(d: &Discovered, opts: &KubeOptions) -> Vec<Target> {
    let core = |kind: Kind| Target {
        kind,
        version: "v1".to_string(),
        namespace: None,
        fields: None,
    };
    let mut out = vec![
        core(Kind::Namespace),
        core(Kind::Node),
        Target {
            // Only the mesh ConfigMaps are read: watch the system namespace alone.
            namespace: Some(opts.system_namespace.clone()),
            ..core(Kind::ConfigMap)
        },
        Target {
            fields: Some(SECRET_FIELD_SELECTOR.to_string()),
            ..core(Kind::Secret)
        },
        core(Kind::Service),
        core(Kind::Pod),
        if d.endpoint_slices {
            core(Kind::EndpointSlice)
        } else {
            core(Kind::Endpoints)
        },
    ];
    out.extend(config_targets(&d.config));
    out
}

fn config_targets(config: &BTreeMap<Kind, String>) -> impl Iterator<Item = Target> + '_ {
    config.iter().map(|(kind, version)| Target {
        kind: *kind,
        version: version.clone(),
        namespace: None,
        fields: None,
    })
}

/// How a watcher task ended.
enum WatchEnd {
    /// The API server no longer serves the kind (its CRD was removed).
    NotServed,
    /// The event channel is closed: the control plane is stopping.
    Closed,
}

/// Runs one cluster until the event channel closes.
#[instrument(skip_all, fields(cluster = %shared.cluster))]
pub(crate) async fn run_cluster(shared: Arc<Shared>) {
    let cluster = shared.cluster.clone();
    let reporter = shared.reporter.clone();
    let (synced_tx, mut synced_rx) = mpsc::channel::<Kind>(32);
    let mut watchers: JoinSet<(Kind, WatchEnd)> = JoinSet::new();
    let mut running: BTreeSet<Kind> = BTreeSet::new();
    // Kinds whose first list is still to come, once discovery has said what to watch.
    let mut pending: Option<BTreeSet<Kind>> = None;
    let mut synced_sent = false;
    let mut discovery_backoff = shared.backoff();
    let never = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut next_discovery = Instant::now();
    let sync_deadline = if shared.primary {
        never
    } else {
        Instant::now() + shared.opts.sync_timeout
    };
    let mut discovered = false;
    let mut cluster_synced = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_discovery) => {
                let found = if discovered {
                    config_versions(&shared.client).await.map(|config| Discovered { config, ..Discovered::default() })
                } else {
                    discover(&shared.client).await
                };
                match found {
                    Ok(d) => {
                        let mut new: Vec<Target> = if discovered {
                            config_targets(&d.config).collect()
                        } else {
                            reporter.discovered();
                            info!(cluster = %cluster, endpoint_slices = d.endpoint_slices, config = ?d.config, "Kubernetes API discovered");
                            targets(&d, &shared.opts)
                        };
                        discovered = true;
                        new.retain(|t| !running.contains(&t.kind));
                        for kind in config_kinds() {
                            if !d.config.contains_key(&kind) && !running.contains(&kind) {
                                reporter.served(kind, None);
                            }
                        }
                        let pending_set = pending.get_or_insert_with(BTreeSet::new);
                        for t in new {
                            if !synced_sent {
                                pending_set.insert(t.kind);
                            }
                            running.insert(t.kind);
                            watchers.spawn(watch_kind(shared.clone(), t, synced_tx.clone()));
                        }
                        let missing = config_kinds().any(|k| !running.contains(&k));
                        next_discovery = if missing { Instant::now() + shared.opts.rediscover } else { never };
                    }
                    Err(error) => {
                        reporter.discovery_failed(&error.to_string());
                        let delay = discovery_backoff.next_delay();
                        warn!(cluster = %cluster, %error, retry_in = ?delay, "Kubernetes API discovery failed");
                        next_discovery = Instant::now() + if discovered { shared.opts.rediscover.max(delay) } else { delay };
                    }
                }
            }
            Some(kind) = synced_rx.recv() => {
                if let Some(p) = pending.as_mut() {
                    p.remove(&kind);
                }
            }
            () = tokio::time::sleep_until(sync_deadline), if !synced_sent => {
                warn!(cluster = %cluster, timeout = ?shared.opts.sync_timeout, "cluster not synced in time; serving without its complete state");
                synced_sent = true;
                if !shared.send(Event::Synced).await {
                    return;
                }
            }
            Some(joined) = watchers.join_next() => match joined {
                Ok((kind, WatchEnd::NotServed)) => {
                    running.remove(&kind);
                    if let Some(p) = pending.as_mut() {
                        p.remove(&kind);
                    }
                    next_discovery = next_discovery.min(Instant::now() + shared.opts.rediscover);
                }
                Ok((_, WatchEnd::Closed)) => return,
                Err(error) => {
                    // A bug (a panic): this cluster's source stops; the last state stays.
                    error!(cluster = %cluster, %error, "watcher task failed; the cluster is no longer watched");
                    return;
                }
            },
        }
        if !cluster_synced && pending.as_ref().is_some_and(BTreeSet::is_empty) {
            cluster_synced = true;
            reporter.synced();
            info!(cluster = %cluster, kinds = running.len(), "cluster synced");
            if !synced_sent {
                synced_sent = true;
                if !shared.send(Event::Synced).await {
                    return;
                }
            }
        }
    }
}

/// What a watcher error means for the watch.
struct Classified {
    /// 410 Gone: the watcher relists (not an outage).
    gone: bool,
    /// The watcher cannot recover by itself: start a new one (which lists afresh).
    restart: bool,
    /// The resource is not served (404).
    not_found: bool,
}

fn classify(e: &watcher::Error) -> Classified {
    let code = match e {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    };
    Classified {
        gone: code == Some(410),
        // kube's watcher retries a refused watch start with the same (expired) resource
        // version forever; only a new watcher lists again.
        restart: code == Some(410) && matches!(e, watcher::Error::WatchStartFailed(_)),
        not_found: code == Some(404)
            && matches!(
                e,
                watcher::Error::InitialListFailed(_) | watcher::Error::WatchStartFailed(_)
            ),
    }
}

#[instrument(skip_all, fields(cluster = %shared.cluster, kind = %target.kind))]
async fn watch_kind(
    shared: Arc<Shared>,
    target: Target,
    synced: mpsc::Sender<Kind>,
) -> (Kind, WatchEnd) {
    let kind = target.kind;
    let end = watch_kind_inner(&shared, &target, synced).await;
    (kind, end)
}

async fn watch_kind_inner(
    shared: &Shared,
    target: &Target,
    synced: mpsc::Sender<Kind>,
) -> WatchEnd {
    let kind = target.kind;
    let cluster = &shared.cluster;
    let reporter = &shared.reporter;
    let ar: ApiResource = api_resource(kind, &target.version);
    let scope = match &target.namespace {
        Some(ns) => format!(" in {ns}"),
        None => String::new(),
    };
    reporter.served(
        kind,
        Some((
            format!("{} {}{scope}", ar.api_version, ar.plural),
            ar.plural.clone(),
        )),
    );
    let mut state = KindWatch::new(
        cluster.clone(),
        kind,
        &ar.api_version,
        &shared.opts.revision,
        &shared.opts.system_namespace,
    );
    let mut backoff = shared.backoff();
    let mut reported_sync = false;
    debug!(cluster = %cluster, %kind, version = %target.version, "watch starting");
    loop {
        let api: Api<DynamicObject> = match &target.namespace {
            Some(ns) => Api::namespaced_with(shared.client.clone(), ns, &ar),
            None => Api::all_with(shared.client.clone(), &ar),
        };
        let mut config = watcher::Config::default().any_semantic();
        if let Some(f) = &target.fields {
            config = config.fields(f);
        }
        if let Some(t) = shared.opts.watch_timeout {
            config = config.timeout(t);
        }
        let mut stream = watcher(api, config).boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    reporter.event(kind);
                    let out = state.handle(event);
                    if let Some((problems, new)) = out.problems {
                        reporter.problems(kind, problems, new);
                    }
                    let changed = !out.events.is_empty();
                    for e in out.events {
                        if !shared.send(e).await {
                            return WatchEnd::Closed;
                        }
                    }
                    if let Some((objects, relist)) = out.listed {
                        reporter.listed(kind, objects, relist);
                        if relist {
                            info!(cluster = %cluster, %kind, objects, lists = state.lists(), "relisted");
                        } else {
                            debug!(cluster = %cluster, %kind, objects, "listed");
                        }
                        if !reported_sync {
                            reported_sync = true;
                            let _ = synced.send(kind).await;
                        }
                    } else if changed {
                        reporter.objects(kind, state.len());
                    }
                }
                Err(error) => {
                    let c = classify(&error);
                    reporter.watch_error(kind, &error.to_string(), c.gone);
                    if c.not_found && kind.is_config() {
                        warn!(cluster = %cluster, %kind, "kind no longer served; its objects are removed");
                        if !shared
                            .send(Event::Reset {
                                kinds: vec![kind],
                                objects: Vec::new(),
                            })
                            .await
                        {
                            return WatchEnd::Closed;
                        }
                        reporter.served(kind, None);
                        if !reported_sync {
                            let _ = synced.send(kind).await;
                        }
                        return WatchEnd::NotServed;
                    }
                    let delay = backoff.next_delay();
                    if c.gone {
                        info!(cluster = %cluster, %kind, %error, relist_in = ?delay, "resource version expired; relisting");
                    } else {
                        warn!(cluster = %cluster, %kind, %error, retry_in = ?delay, "watch failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    if c.restart {
                        break;
                    }
                }
            }
        }
    }
}
