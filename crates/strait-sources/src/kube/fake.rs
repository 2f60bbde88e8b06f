//! An in-process fake Kubernetes API server, for tests: list and watch with resource versions
//! for the kinds strait reads, bookmarks, 410 Gone for an expired resource version (as an
//! `ERROR` watch event, as the real API server does, or as an HTTP 410), dropped connections,
//! an outage (the port closes) and the discovery endpoints (`/api`, `/apis`, …).
//!
//! Tests change the objects directly ([`FakeApiServer::apply`], [`FakeApiServer::delete`]), or
//! clients change them over HTTP (get, create, replace, patch and delete of single objects, for
//! the CLI's writes); every change gets the next resource version and is streamed to the
//! watches that match. No pagination, no authentication, no admission, no field validation.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a watch from an expired resource version is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneMode {
    /// HTTP 200 and one `ERROR` event with a 410 `Status` (what the API server does).
    ErrorEvent,
    /// HTTP 410 with a `Status` body.
    Http,
}

/// What the fake serves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Versions of `networking.istio.io` served (empty: no Istio CRDs installed).
    pub istio_versions: Vec<String>,
    /// Versions of `policy.strait.io` served (empty: strait's CRDs not installed).
    pub policy_versions: Vec<String>,
    /// `discovery.k8s.io/v1` EndpointSlices are served.
    pub endpoint_slices: bool,
    /// Send a bookmark on idle watches that asked for them, this often.
    pub bookmark_interval: Option<Duration>,
    /// How an expired resource version is answered.
    pub gone: GoneMode,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            istio_versions: vec!["v1".into(), "v1beta1".into(), "v1alpha3".into()],
            policy_versions: vec!["v1alpha1".into()],
            endpoint_slices: true,
            bookmark_interval: None,
            gone: GoneMode::ErrorEvent,
        }
    }
}

/// A resource type the fake knows.
#[derive(Debug, Clone)]
struct ResourceDef {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
}

const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
    },
    ResourceDef {
        group: "",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
    },
    ResourceDef {
        group: "",
        kind: "Service",
        plural: "services",
        namespaced: true,
    },
    ResourceDef {
        group: "",
        kind: "Endpoints",
        plural: "endpoints",
        namespaced: true,
    },
    ResourceDef {
        group: "",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
    },
    ResourceDef {
        group: "",
        kind: "Secret",
        plural: "secrets",
        namespaced: true,
    },
    ResourceDef {
        group: "",
        kind: "ConfigMap",
        plural: "configmaps",
        namespaced: true,
    },
    ResourceDef {
        group: "discovery.k8s.io",
        kind: "EndpointSlice",
        plural: "endpointslices",
        namespaced: true,
    },
    ResourceDef {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        namespaced: true,
    },
    ResourceDef {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        namespaced: true,
    },
    ResourceDef {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        namespaced: true,
    },
    ResourceDef {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        namespaced: true,
    },
    ResourceDef {
        group: "networking.istio.io",
        kind: "Sidecar",
        plural: "sidecars",
        namespaced: true,
    },
    ResourceDef {
        group: "policy.strait.io",
        kind: "LocalRateLimit",
        plural: "localratelimits",
        namespaced: true,
    },
    ResourceDef {
        group: "admissionregistration.k8s.io",
        kind: "MutatingWebhookConfiguration",
        plural: "mutatingwebhookconfigurations",
        namespaced: false,
    },
];

/// Groups of custom resources (whose list items carry their apiVersion and kind).
const CUSTOM_GROUPS: &[&str] = &["networking.istio.io", "policy.strait.io"];

/// A request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method (`GET` for lists and watches).
    pub method: String,
    /// The path.
    pub path: String,
    /// The decoded query parameters.
    pub query: BTreeMap<String, String>,
}

impl RecordedRequest {
    /// True for a watch request.
    pub fn is_watch(&self) -> bool {
        self.method == "GET"
            && matches!(
                self.query.get("watch").map(String::as_str),
                Some("true" | "1")
            )
    }

    /// The resource's plural name (the last path segment).
    pub fn plural(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }
}

struct LogEntry {
    rv: u64,
    plural: &'static str,
    kind: &'static str,
    object: Value,
}

struct Store {
    rv: u64,
    /// Watches from a resource version below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    log: Vec<LogEntry>,
    requests: Vec<RecordedRequest>,
    failures: VecDeque<u16>,
    uid: u64,
    /// The latest resource version sent in a bookmark, by resource.
    bookmarks: BTreeMap<&'static str, u64>,
}

struct Shared {
    store: Mutex<Store>,
    opts: Mutex<FakeOptions>,
    changed: watch::Sender<u64>,
    kill: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn opts(&self) -> FakeOptions {
        self.opts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn served(&self, def: &ResourceDef, version: &str) -> bool {
        let opts = self.opts();
        match def.group {
            "" => version == "v1",
            "discovery.k8s.io" => opts.endpoint_slices && version == "v1",
            "admissionregistration.k8s.io" => version == "v1",
            "policy.strait.io" => opts.policy_versions.iter().any(|v| v == version),
            _ => opts.istio_versions.iter().any(|v| v == version),
        }
    }
}

/// A running fake API server. Stops when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.kill.send_modify(|g| *g += 1);
        if let Some(t) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let code_ = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code_,
        [(header::CONTENT_TYPE, "application/json")],
        status(code, reason, message).to_string(),
    )
        .into_response()
}

fn json_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// A `key=value`, `key==value` or `key!=value` requirement.
#[derive(Debug, Clone)]
struct Requirement {
    key: String,
    value: Option<String>,
    negate: bool,
}

fn parse_selector(s: Option<&String>) -> Vec<Requirement> {
    s.map(|s| {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let p = p.trim();
                if let Some((k, v)) = p.split_once("!=") {
                    Requirement {
                        key: k.into(),
                        value: Some(v.into()),
                        negate: true,
                    }
                } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                    Requirement {
                        key: k.into(),
                        value: Some(v.into()),
                        negate: false,
                    }
                } else if let Some(k) = p.strip_prefix('!') {
                    Requirement {
                        key: k.into(),
                        value: None,
                        negate: true,
                    }
                } else {
                    Requirement {
                        key: p.into(),
                        value: None,
                        negate: false,
                    }
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

fn field_value(obj: &Value, key: &str) -> Option<String> {
    let mut v = obj;
    for part in key.split('.') {
        v = v.get(part)?;
    }
    v.as_str().map(str::to_string)
}

fn matches(obj: &Value, fields: &[Requirement], labels: &[Requirement]) -> bool {
    let field_ok = fields.iter().all(|r| {
        let v = field_value(obj, &r.key).unwrap_or_default();
        (Some(&v) == r.value.as_ref()) != r.negate
    });
    let label_ok = labels.iter().all(|r| {
        let v = obj
            .pointer("/metadata/labels")
            .and_then(|l| l.get(&r.key))
            .and_then(Value::as_str);
        let hit = match (&r.value, v) {
            (Some(want), Some(have)) => want == have,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        hit != r.negate
    });
    field_ok && label_ok
}

/// What a list or watch request asks for.
struct Query {
    def: &'static ResourceDef,
    api_version: String,
    namespace: Option<String>,
    fields: Vec<Requirement>,
    labels: Vec<Requirement>,
}

impl Query {
    fn selects(&self, ns: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && matches(obj, &self.fields, &self.labels)
    }

    /// The object as this request's version presents it.
    fn present(&self, obj: &Value) -> Value {
        let mut o = obj.clone();
        if let Some(m) = o.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
            m.insert("kind".into(), Value::String(self.def.kind.into()));
        }
        o
    }
}

fn line(event: &str, object: Value) -> Bytes {
    let mut b = json!({"type": event, "object": object}).to_string();
    b.push('\n');
    Bytes::from(b)
}

struct WatchState {
    shared: Arc<Shared>,
    query: Query,
    cursor: u64,
    bookmarks: Option<Duration>,
    deadline: Instant,
    changed: watch::Receiver<u64>,
    kill: watch::Receiver<u64>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl WatchState {
    /// Queues the events after the cursor; true if there were any.
    fn collect(&mut self) -> bool {
        self.changed.borrow_and_update();
        let store = self.shared.lock();
        let mut any = false;
        for e in store.log.iter().filter(|e| e.rv > self.cursor) {
            if e.plural != self.query.def.plural {
                continue;
            }
            let ns = e
                .object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if self.query.selects(ns, &e.object) {
                self.pending
                    .push_back(line(e.kind, self.query.present(&e.object)));
                any = true;
            }
        }
        self.cursor = store.rv;
        any
    }

    fn bookmark(&mut self) {
        let mut store = self.shared.lock();
        self.cursor = self.cursor.max(store.rv);
        let sent = store.bookmarks.entry(self.query.def.plural).or_default();
        *sent = (*sent).max(self.cursor);
        drop(store);
        let object = json!({
            "kind": self.query.def.kind, "apiVersion": self.query.api_version,
            "metadata": {"resourceVersion": self.cursor.to_string()},
        });
        self.pending.push_back(line("BOOKMARK", object));
    }
}

async fn next_chunk(mut w: WatchState) -> Option<(Result<Bytes, io::Error>, WatchState)> {
    loop {
        if let Some(b) = w.pending.pop_front() {
            return Some((Ok(b), w));
        }
        if w.done {
            return None;
        }
        if w.kill.has_changed().unwrap_or(true) {
            w.done = true;
            return Some((Err(reset()), w));
        }
        if w.collect() {
            continue;
        }
        let bookmark = w.bookmarks.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = w.changed.changed() => {}
            _ = w.kill.changed() => {
                w.done = true;
                return Some((Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection dropped")), w));
            }
            () = tokio::time::sleep_until(w.deadline) => w.done = true,
            () = tokio::time::sleep(bookmark), if w.bookmarks.is_some() => w.bookmark(),
        }
    }
}

/// Splits `/api/v1/...` and `/apis/g/v/...` into (group, version, rest).
fn split_path(path: &str) -> Option<(String, String, Vec<String>)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["api", v, rest @ ..] => Some((
            String::new(),
            (*v).to_string(),
            rest.iter().map(|s| s.to_string()).collect(),
        )),
        ["apis", g, v, rest @ ..] => Some((
            (*g).to_string(),
            (*v).to_string(),
            rest.iter().map(|s| s.to_string()).collect(),
        )),
        _ => None,
    }
}

fn resource_list(shared: &Shared, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for def in RESOURCES.iter().filter(|d| d.group == group) {
        if !shared.served(def, version) {
            continue;
        }
        resources.push(json!({
            "name": def.plural, "singularName": def.kind.to_lowercase(), "namespaced": def.namespaced,
            "kind": def.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if CUSTOM_GROUPS.contains(&def.group) {
            resources.push(json!({
                "name": format!("{}/status", def.plural), "singularName": "", "namespaced": true,
                "kind": def.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn api_group(shared: &Shared, group: &str) -> Option<Value> {
    let opts = shared.opts();
    let versions: Vec<String> = match group {
        "discovery.k8s.io" if opts.endpoint_slices => vec!["v1".into()],
        "admissionregistration.k8s.io" => vec!["v1".into()],
        "networking.istio.io" => opts.istio_versions.clone(),
        "policy.strait.io" => opts.policy_versions.clone(),
        _ => Vec::new(),
    };
    let first = versions.first()?;
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    Some(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(first),
    }))
}

/// The pod proxy subresource (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`): a GET
/// forwarded to the pod's IP, as the API server does (over HTTP/1.0, so the answer is never
/// chunked). `None` for other paths.
async fn pod_proxy(shared: &Shared, path: &str, query: Option<&str>) -> Option<Response> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, rest) = rest.split_once("/pods/")?;
    let (target, rest) = rest.split_once("/proxy")?;
    let (name, port) = target.split_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip = {
        let store = shared.lock();
        store
            .objects
            .get("pods")
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .and_then(|p| p.pointer("/status/podIP"))
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    };
    let Some(ip) = ip else {
        return Some(status_response(
            404,
            "NotFound",
            &format!("pod {ns}/{name} not found or without IP"),
        ));
    };
    let target_path = match query {
        Some(q) => format!("{}?{q}", if rest.is_empty() { "/" } else { rest }),
        None => (if rest.is_empty() { "/" } else { rest }).to_string(),
    };
    let answer = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = TcpStream::connect((ip, port)).await?;
        let request = format!("GET {target_path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await?;
        io::Result::Ok(raw)
    };
    let raw = match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => return Some(status_response(503, "ServiceUnavailable", &e.to_string())),
        Err(_) => return Some(status_response(503, "ServiceUnavailable", "timed out")),
    };
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw[split + 4..].to_vec();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    Some((code, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = parse_query(uri.query());
    let failure = {
        let mut store = shared.lock();
        store.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
        });
        store.failures.pop_front()
    };
    if let Some(code) = failure {
        return status_response(code, "InternalError", "injected failure");
    }
    let not_found = || {
        status_response(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        )
    };
    if method == Method::GET {
        match path.trim_end_matches('/') {
            "/api" => {
                return json_response(&json!({"kind": "APIVersions", "versions": ["v1"]}));
            }
            "/apis" => {
                let groups: Vec<Value> = [
                    "discovery.k8s.io",
                    "admissionregistration.k8s.io",
                    "networking.istio.io",
                    "policy.strait.io",
                ]
                .iter()
                .filter_map(|g| api_group(&shared, g))
                .collect();
                return json_response(
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                );
            }
            p => {
                if let Some(group) = p.strip_prefix("/apis/")
                    && !group.contains('/')
                {
                    return match api_group(&shared, group) {
                        Some(g) => json_response(&g),
                        None => not_found(),
                    };
                }
            }
        }
    }
    if method == Method::GET
        && let Some(answer) = pod_proxy(&shared, &path, uri.query()).await
    {
        return answer;
    }
    let Some((group, version, rest)) = split_path(&path) else {
        return not_found();
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    // (namespace, plural, name): a collection without a name, else one object.
    let (namespace, plural, name) = match rest.as_slice() {
        [] if method == Method::GET => {
            return match resource_list(&shared, &group, &version) {
                Some(l) => json_response(&l),
                None => not_found(),
            };
        }
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some((*ns).to_string()), *plural, None),
        [plural, name] => (None, *plural, Some((*name).to_string())),
        ["namespaces", ns, plural, name] => {
            (Some((*ns).to_string()), *plural, Some((*name).to_string()))
        }
        _ => return not_found(),
    };
    let Some(def) = RESOURCES
        .iter()
        .find(|d| d.group == group && d.plural == plural)
    else {
        return not_found();
    };
    if !shared.served(def, &version) || (namespace.is_some() && !def.namespaced) {
        return not_found();
    }
    let api_version = if group.is_empty() {
        version.clone()
    } else {
        format!("{group}/{version}")
    };
    if let Some(name) = name {
        if def.namespaced && namespace.is_none() {
            return not_found();
        }
        let target = Target {
            def,
            api_version,
            namespace: namespace.unwrap_or_default(),
            name,
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        return match method {
            Method::GET => shared.get(&target),
            Method::PUT => shared.replace(&target, &body),
            Method::PATCH => shared.patch(&target, &content_type, &body),
            Method::DELETE => shared.remove(&target),
            _ => Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: "method not allowed on an object".into(),
            }),
        }
        .unwrap_or_else(|e| e.response());
    }
    if method == Method::POST {
        if def.namespaced && namespace.is_none() {
            return status_response(405, "MethodNotAllowed", "create in a namespace");
        }
        return shared
            .create(def, &api_version, namespace.as_deref(), &body)
            .unwrap_or_else(|e| e.response());
    }
    if method != Method::GET {
        return status_response(
            405,
            "MethodNotAllowed",
            "method not allowed on a collection",
        );
    }
    let q = Query {
        def,
        api_version,
        namespace,
        fields: parse_selector(query.get("fieldSelector")),
        labels: parse_selector(query.get("labelSelector")),
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if watching {
        watch(shared, q, &query)
    } else {
        list(&shared, &q)
    }
}

/// One object an HTTP request names.
struct Target {
    def: &'static ResourceDef,
    api_version: String,
    namespace: String,
    name: String,
}

impl Target {
    fn key(&self) -> (String, String) {
        let ns = if self.def.namespaced {
            self.namespace.clone()
        } else {
            String::new()
        };
        (ns, self.name.clone())
    }

    fn not_found(&self) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{}\" not found", self.def.plural, self.name),
        }
    }

    /// The stored object as this request's version presents it.
    fn present(&self, obj: &Value) -> Value {
        let mut o = obj.clone();
        if let Some(m) = o.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
            m.insert("kind".into(), Value::String(self.def.kind.into()));
        }
        o
    }
}

/// A refused write, answered with a `Status`.
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
        }
    }

    fn response(&self) -> Response {
        status_response(self.code, self.reason, &self.message)
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::bad_request("the body is not an object"))
    }
}

/// RFC 7386 JSON merge patch (also used, as an approximation, for strategic merge patches and
/// server-side apply: lists are replaced rather than merged by key).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in fields {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn pointer_parts(path: &str) -> Result<Vec<String>, ApiError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ApiError::bad_request(format!(
            "invalid JSON pointer {path:?}"
        )));
    };
    Ok(rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace` and `test`.
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch is an array"))?;
    for op in ops {
        let path = op["path"].as_str().unwrap_or_default();
        let mut parts = pointer_parts(path)?;
        let last = parts
            .pop()
            .ok_or_else(|| ApiError::bad_request("empty patch path"))?;
        let parent_path: String = parts
            .iter()
            .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
            .collect();
        let invalid = |what: &str| ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("JSON patch {what} at {path}"),
        };
        let parent = target
            .pointer_mut(&parent_path)
            .ok_or_else(|| invalid("has no parent"))?;
        match (op["op"].as_str().unwrap_or_default(), parent) {
            ("add" | "replace", Value::Object(m)) => {
                m.insert(last, op["value"].clone());
            }
            ("add", Value::Array(a)) => {
                let value = op["value"].clone();
                if last == "-" {
                    a.push(value);
                } else {
                    let i: usize = last.parse().map_err(|_| invalid("has a bad index"))?;
                    if i > a.len() {
                        return Err(invalid("is out of range"));
                    }
                    a.insert(i, value);
                }
            }
            ("replace", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| invalid("has a bad index"))?;
                *a.get_mut(i).ok_or_else(|| invalid("is out of range"))? = op["value"].clone();
            }
            ("remove", Value::Object(m)) => {
                m.remove(&last).ok_or_else(|| invalid("removes nothing"))?;
            }
            ("remove", Value::Array(a)) => {
                let i: usize = last.parse().map_err(|_| invalid("has a bad index"))?;
                if i >= a.len() {
                    return Err(invalid("is out of range"));
                }
                a.remove(i);
            }
            ("test", _) => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(invalid("test failed"));
                }
            }
            (other, _) => return Err(invalid(&format!("op {other:?} is not supported"))),
        }
    }
    Ok(())
}

impl Shared {
    fn stored(&self, t: &Target) -> Option<Value> {
        self.lock()
            .objects
            .get(t.def.plural)
            .and_then(|m| m.get(&t.key()))
            .cloned()
    }

    fn get(&self, t: &Target) -> Result<Response, ApiError> {
        let obj = self.stored(t).ok_or_else(|| t.not_found())?;
        Ok(json_response(&t.present(&obj)))
    }

    fn create(
        &self,
        def: &'static ResourceDef,
        api_version: &str,
        namespace: Option<&str>,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let mut obj = parse_body(body)?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError {
                code: 422,
                reason: "Invalid",
                message: "metadata.name: Required value".into(),
            })?
            .to_string();
        let t = Target {
            def,
            api_version: api_version.to_string(),
            namespace: namespace.unwrap_or_default().to_string(),
            name,
        };
        if self.stored(&t).is_some() {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{}\" already exists", def.plural, t.name),
            });
        }
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("uid");
        }
        let stored = self.put(def, &t.namespace, t.present(&obj));
        Ok((
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            t.present(&stored).to_string(),
        )
            .into_response())
    }

    /// Replaces an existing object; a stale `metadata.resourceVersion` is a conflict.
    fn replace_value(&self, t: &Target, mut obj: Value) -> Result<Response, ApiError> {
        let current = self.stored(t).ok_or_else(|| t.not_found())?;
        let name = obj.pointer("/metadata/name").and_then(Value::as_str);
        if name.is_some_and(|n| n != t.name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name in the URL",
            ));
        }
        let sent_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty());
        let current_rv = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if sent_rv.is_some() && sent_rv != current_rv {
            return Err(ApiError {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    t.def.plural, t.name
                ),
            });
        }
        if let Some(m) = obj.as_object_mut() {
            let meta = m
                .entry("metadata")
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("name".into(), Value::String(t.name.clone()));
                if let Some(created) = current.pointer("/metadata/creationTimestamp") {
                    meta.insert("creationTimestamp".into(), created.clone());
                }
            }
        }
        let stored = self.put(t.def, &t.namespace, t.present(&obj));
        Ok(json_response(&t.present(&stored)))
    }

    fn replace(&self, t: &Target, body: &[u8]) -> Result<Response, ApiError> {
        self.replace_value(t, parse_body(body)?)
    }

    fn patch(&self, t: &Target, content_type: &str, body: &[u8]) -> Result<Response, ApiError> {
        let patch: Value = serde_json::from_slice(body)
            .or_else(|_| serde_yaml_ng::from_slice(body))
            .map_err(|e| ApiError::bad_request(format!("the patch is not JSON: {e}")))?;
        let mime = content_type.split(';').next().unwrap_or_default().trim();
        let current = match self.stored(t) {
            Some(c) => c,
            // Server-side apply creates what does not exist.
            None if mime == "application/apply-patch+yaml" => {
                let ns = Some(t.namespace.as_str()).filter(|_| t.def.namespaced);
                let body = serde_json::to_vec(&patch).unwrap_or_default();
                return self.create(t.def, &t.api_version, ns, &body);
            }
            None => return Err(t.not_found()),
        };
        let mut obj = current;
        match mime {
            "application/json-patch+json" => json_patch(&mut obj, &patch)?,
            "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
            | "application/apply-patch+yaml" => merge_patch(&mut obj, &patch),
            other => {
                return Err(ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType",
                    message: format!("the body of the request was in an unknown format: {other}"),
                });
            }
        }
        // A patch that sets no resource version applies to the current one.
        if patch.pointer("/metadata/resourceVersion").is_none()
            && let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        {
            meta.remove("resourceVersion");
        }
        self.replace_value(t, obj)
    }

    fn remove(&self, t: &Target) -> Result<Response, ApiError> {
        let (ns, name) = t.key();
        let obj = self
            .delete_object(t.def, &ns, &name)
            .ok_or_else(|| t.not_found())?;
        Ok(json_response(&t.present(&obj)))
    }

    /// Stores `obj` (created or replaced) with the next resource version and logs the event;
    /// returns what was stored.
    fn put(&self, def: &'static ResourceDef, namespace: &str, mut obj: Value) -> Value {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ns = if def.namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        let rv = {
            let mut store = self.lock();
            store.rv += 1;
            store.uid += 1;
            let rv = store.rv;
            let uid = store.uid;
            let key = (ns.clone(), name);
            let existed = store
                .objects
                .get(def.plural)
                .and_then(|m| m.get(&key))
                .cloned();
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                if def.namespaced {
                    meta.insert("namespace".into(), Value::String(ns));
                }
                meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
                let uid = existed
                    .as_ref()
                    .and_then(|o| o.pointer("/metadata/uid").cloned())
                    .unwrap_or_else(|| Value::String(format!("uid-{uid}")));
                meta.insert("uid".into(), uid);
                meta.entry("creationTimestamp")
                    .or_insert_with(|| Value::String("2025-01-01T00:00:00Z".into()));
                meta.insert(
                    "managedFields".into(),
                    json!([{"manager": "fake", "operation": "Apply", "fieldsV1": {"f:metadata": {}}}]),
                );
            }
            store
                .objects
                .entry(def.plural)
                .or_default()
                .insert(key, obj.clone());
            store.log.push(LogEntry {
                rv,
                plural: def.plural,
                kind: if existed.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                },
                object: obj.clone(),
            });
            rv
        };
        self.changed.send_replace(rv);
        obj
    }

    /// Removes an object and logs its deletion; returns it as it was last stored.
    fn delete_object(
        &self,
        def: &'static ResourceDef,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let ns = if def.namespaced { namespace } else { "" };
        let (rv, obj) = {
            let mut store = self.lock();
            let mut obj = store
                .objects
                .get_mut(def.plural)
                .and_then(|m| m.remove(&(ns.to_string(), name.to_string())))?;
            store.rv += 1;
            let rv = store.rv;
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            }
            store.log.push(LogEntry {
                rv,
                plural: def.plural,
                kind: "DELETED",
                object: obj.clone(),
            });
            (rv, obj)
        };
        self.changed.send_replace(rv);
        Some(obj)
    }
}

fn list(shared: &Shared, q: &Query) -> Response {
    let store = shared.lock();
    let builtin = !CUSTOM_GROUPS.contains(&q.def.group);
    let items: Vec<Value> = store
        .objects
        .get(q.def.plural)
        .into_iter()
        .flatten()
        .filter(|((ns, _), o)| q.selects(ns, o))
        .map(|(_, o)| {
            // Like the API server, built-in kinds' list items carry no apiVersion and kind.
            let mut o = q.present(o);
            if builtin && let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    json_response(&json!({
        "kind": format!("{}List", q.def.kind), "apiVersion": q.api_version,
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
}

fn watch(shared: Arc<Shared>, q: Query, params: &BTreeMap<String, String>) -> Response {
    let opts = shared.opts();
    let from = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (current, compacted) = {
        let s = shared.lock();
        (s.rv, s.compacted)
    };
    let mut pending = VecDeque::new();
    let mut done = false;
    let cursor = match from {
        "" | "0" => {
            // Synthetic ADDED events for the current state, then changes.
            let store = shared.lock();
            for ((ns, _), o) in store.objects.get(q.def.plural).into_iter().flatten() {
                if q.selects(ns, o) {
                    pending.push_back(line("ADDED", q.present(o)));
                }
            }
            current
        }
        rv => {
            let Ok(rv) = rv.parse::<u64>() else {
                return status_response(400, "BadRequest", "invalid resourceVersion");
            };
            if rv < compacted {
                let msg = format!("too old resource version: {rv} ({compacted})");
                if opts.gone == GoneMode::Http {
                    return status_response(410, "Expired", &msg);
                }
                pending.push_back(line("ERROR", status(410, "Expired", &msg)));
                done = true;
            }
            rv
        }
    };
    let state = WatchState {
        changed: shared.changed.subscribe(),
        kill: {
            let mut k = shared.kill.subscribe();
            k.borrow_and_update();
            k
        },
        shared,
        query: q,
        cursor,
        bookmarks: if bookmarks {
            opts.bookmark_interval
        } else {
            None
        },
        deadline: Instant::now() + Duration::from_secs(timeout),
        pending,
        done,
    };
    let stream = futures_util::stream::unfold(state, next_chunk);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A connection that fails as soon as the server drops its connections.
struct KillableIo {
    io: TcpStream,
    kill: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillableIo {
    fn dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.kill.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection dropped")
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

struct KillableListener {
    inner: TcpListener,
    kill: watch::Sender<u64>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((io, addr)) = self.inner.accept().await {
                let mut rx = self.kill.subscribe();
                rx.borrow_and_update();
                let kill = Box::pin(async move {
                    let _ = rx.changed().await;
                });
                return (
                    KillableIo {
                        io,
                        kill,
                        dead: false,
                    },
                    addr,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn resource_of(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    RESOURCES
        .iter()
        .find(|d| d.group == group && d.kind == kind)
}

impl FakeApiServer {
    /// Starts a fake serving everything, on a free loopback port.
    pub async fn start() -> FakeApiServer {
        Self::start_with(FakeOptions::default()).await
    }

    /// Starts a fake with `opts`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start_with(opts: FakeOptions) -> FakeApiServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("fake API server cannot bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake API server address: {e}"));
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1,
                compacted: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                requests: Vec::new(),
                failures: VecDeque::new(),
                uid: 0,
                bookmarks: BTreeMap::new(),
            }),
            opts: Mutex::new(opts),
            changed: watch::channel(1).0,
            kill: watch::channel(0).0,
        });
        let server = FakeApiServer {
            shared,
            addr,
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let listener = KillableListener {
            inner: listener,
            kill: self.shared.kill.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// The server's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context, `context`, points at the fake.
    pub fn kubeconfig(&self, context: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {context}\n\
             clusters:\n- name: fake\n  cluster: {{server: '{}'}}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: {context}\n  context: {{cluster: fake, user: fake}}\n",
            self.url()
        )
    }

    /// Creates or replaces an object (`apiVersion`, `kind`, `metadata.name` and, for
    /// namespaced kinds, `metadata.namespace` must be set); returns its resource version.
    ///
    /// # Panics
    ///
    /// If the object is not of a kind the fake knows, or has no name.
    pub fn apply(&self, obj: Value) -> u64 {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let def = resource_of(&api_version, &kind)
            .unwrap_or_else(|| panic!("the fake API server does not serve {api_version} {kind}"));
        if obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .is_none()
        {
            panic!("{kind} without a name");
        }
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let stored = self.shared.put(def, &ns, obj);
        stored
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|rv| rv.parse().ok())
            .unwrap_or_default()
    }

    /// The stored object, as it was last written (tests read what clients wrote).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let def = resource_of(api_version, kind)?;
        let ns = if def.namespaced { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(def.plural)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    /// Applies every document of a YAML stream.
    ///
    /// # Panics
    ///
    /// If the YAML is invalid or a document is not an object the fake knows.
    pub fn apply_yaml(&self, yaml: &str) {
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("invalid YAML: {e}"));
            if !v.is_null() {
                self.apply(v);
            }
        }
    }

    /// Deletes an object; false if there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(def) = resource_of(api_version, kind) else {
            return false;
        };
        self.shared.delete_object(def, namespace, name).is_some()
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the history: watches that resume from an older resource version get 410 Gone
    /// and must list again.
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        store.compacted = store.rv;
        let rv = store.rv;
        store.log.retain(|e| e.rv > rv);
    }

    /// Drops every open connection (watches included), as a restarted API server or a
    /// broken network path would; the port stays open.
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|g| *g += 1);
    }

    /// Stops answering: drops every connection and closes the port (connections are
    /// refused) until [`FakeApiServer::resume`].
    pub async fn pause(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        self.drop_connections();
    }

    /// Listens again on the same port after [`FakeApiServer::pause`].
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again.
    pub async fn resume(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("fake API server cannot bind {} again: {e}", self.addr));
        self.serve(listener);
    }

    /// The next `n` requests fail with HTTP `code`.
    pub fn fail_next(&self, n: usize, code: u16) {
        self.shared
            .lock()
            .failures
            .extend(std::iter::repeat_n(code, n));
    }

    /// How an expired resource version is answered from now on.
    pub fn set_gone_mode(&self, gone: GoneMode) {
        self.shared
            .opts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gone = gone;
    }

    /// Which versions of `networking.istio.io` are served from now on (empty: none, as
    /// when the CRDs are removed).
    pub fn set_istio_versions(&self, versions: &[&str]) {
        self.shared
            .opts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .istio_versions = versions.iter().map(|v| v.to_string()).collect();
    }

    /// The latest resource version a bookmark carried to a watch of `plural`.
    pub fn last_bookmark(&self, plural: &str) -> Option<u64> {
        self.shared.lock().bookmarks.get(plural).copied()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// GET requests so far for the collection `plural`: (lists, watches).
    pub fn request_counts(&self, plural: &str) -> (usize, usize) {
        let store = self.shared.lock();
        let mine = store
            .requests
            .iter()
            .filter(|r| r.method == "GET" && r.plural() == plural);
        let (watches, lists): (Vec<_>, Vec<_>) = mine.partition(|r| r.is_watch());
        (lists.len(), watches.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_selectors() {
        let q = parse_query(Some(
            "watch=true&fieldSelector=type%21%3Dhelm.sh%2Frelease.v1%2Cmetadata.name%3Da",
        ));
        assert_eq!(q["watch"], "true");
        let sel = parse_selector(q.get("fieldSelector"));
        let secret = json!({"type": "Opaque", "metadata": {"name": "a"}});
        assert!(matches(&secret, &sel, &[]));
        let helm = json!({"type": "helm.sh/release.v1", "metadata": {"name": "a"}});
        assert!(!matches(&helm, &sel, &[]));
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn merge_and_json_patches() {
        let mut obj =
            json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}});
        merge_patch(
            &mut obj,
            &json!({"metadata": {"labels": {"x": null, "z": "3"}}, "data": "flat"}),
        );
        assert_eq!(
            obj,
            json!({"metadata": {"name": "a", "labels": {"y": "2", "z": "3"}}, "data": "flat"})
        );
        let mut obj = json!({"webhooks": [{"name": "a"}, {"name": "b"}]});
        json_patch(
            &mut obj,
            &json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "b"},
                {"op": "replace", "path": "/webhooks/0/name", "value": "c"},
                {"op": "add", "path": "/webhooks/0/caBundle", "value": "Q0E="},
                {"op": "add", "path": "/webhooks/-", "value": {"name": "d"}},
                {"op": "remove", "path": "/webhooks/1"},
            ]),
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(
            obj,
            json!({"webhooks": [{"name": "c", "caBundle": "Q0E="}, {"name": "d"}]})
        );
        let failed = json_patch(
            &mut obj,
            &json!([{"op": "test", "path": "/webhooks/0/name", "value": "x"}]),
        );
        assert_eq!(failed.map_err(|e| e.code), Err(422));
    }

    #[tokio::test]
    async fn writes_over_http_are_stored_versioned_and_watched() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
        use strait_api::k8s_openapi;

        let fake = FakeApiServer::start().await;
        let client = crate::kube::client(Some(&crate::kube::KubeCluster {
            id: "fake".into(),
            connect: crate::kube::KubeConnect::Url(fake.url()),
        }))
        .await
        .expect("client");
        let api: Api<ConfigMap> = Api::namespaced(client, "istio-system");
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "istio"}, "data": {"mesh": "{}"},
        }))
        .expect("ConfigMap");
        let before = fake.resource_version();
        let created = api
            .create(&PostParams::default(), &cm)
            .await
            .expect("create");
        let rv = created.metadata.resource_version.clone().expect("rv");
        assert!(rv.parse::<u64>().expect("number") > before);
        assert_eq!(created.metadata.namespace.as_deref(), Some("istio-system"));
        let again = api.create(&PostParams::default(), &cm).await;
        assert!(
            matches!(&again, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists"),
            "{again:?}"
        );

        let patched = api
            .patch(
                "istio",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"extra": "1"}})),
            )
            .await
            .expect("patch");
        let data = patched.data.clone().unwrap_or_default();
        assert_eq!((data["mesh"].as_str(), data["extra"].as_str()), ("{}", "1"));

        // A replace based on an old resource version is a conflict.
        let mut stale = created.clone();
        stale.data = None;
        let conflict = api.replace("istio", &PostParams::default(), &stale).await;
        assert!(
            matches!(&conflict, Err(kube::Error::Api(s)) if s.code == 409),
            "{conflict:?}"
        );
        let replaced = api
            .replace("istio", &PostParams::default(), &patched)
            .await
            .expect("replace from the current version");
        assert_eq!(replaced.metadata.uid, created.metadata.uid, "same object");

        let stored = fake
            .get("v1", "ConfigMap", "istio-system", "istio")
            .expect("stored");
        assert_eq!(stored["data"]["extra"], "1");
        api.delete("istio", &DeleteParams::default())
            .await
            .expect("delete");
        assert!(api.get_opt("istio").await.expect("get").is_none());
        let missing = api.delete("istio", &DeleteParams::default()).await;
        assert!(
            matches!(&missing, Err(kube::Error::Api(s)) if s.code == 404),
            "{missing:?}"
        );

        // Watches see what clients wrote: ADDED, MODIFIED twice, DELETED.
        let events: Vec<&'static str> = fake
            .shared
            .lock()
            .log
            .iter()
            .filter(|e| e.plural == "configmaps")
            .map(|e| e.kind)
            .collect();
        assert_eq!(events, ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]);
        let writes: Vec<String> = fake
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| r.method)
            .collect();
        assert_eq!(
            writes,
            ["POST", "POST", "PATCH", "PUT", "PUT", "DELETE", "DELETE"]
        );
        assert_eq!(
            fake.request_counts("configmaps"),
            (0, 0),
            "writes are no lists"
        );
    }
}
