//! Upstream test servers: each answers with its own name, so a test sees where a request
//! went, and can be made to misbehave (errors, slowness) per server or per request.
//!
//! Every response carries a JSON body `{"server", "path", "method", "host", "headers",
//! "cookies"}` (what the server saw) and an `x-upstream: <name>` header, also when the status
//! is an error. Per request, the query string can ask for:
//!
//! - `status=503`: answer with that status;
//! - `delay_ms=300`: answer after that long;
//! - `resp_header=name:value` (repeatable): add a response header.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use tokio::task::JoinHandle;

/// How many requests a server remembers for [`Upstream::requests`].
const REMEMBERED: usize = 1000;

/// A running upstream HTTP server.
pub struct Upstream {
    /// Its name, returned in every response.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    ctl: Arc<Control>,
    task: JoinHandle<()>,
}

/// What a server does, changeable while it runs.
#[derive(Default)]
struct Control {
    hits: AtomicU64,
    /// Status for every request (0: 200).
    status: AtomicU16,
    /// Delay before every answer, in milliseconds.
    delay_ms: AtomicU64,
    /// Every n-th request answers 503 (0: never).
    fail_every: AtomicU64,
    /// Requests counted since `fail_every` was set.
    fail_count: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    seen: Mutex<VecDeque<serde_json::Value>>,
}

#[derive(Clone)]
struct Ctx {
    name: Arc<str>,
    ctl: Arc<Control>,
}

/// Decrements the in-flight count when a request ends, also when its client goes away.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn query_params(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.replace("%3A", ":").replace("%3a", ":"))
        })
        .collect()
}

async fn answer(State(ctx): State<Ctx>, req: Request) -> Response {
    let ctl = &ctx.ctl;
    ctl.hits.fetch_add(1, Ordering::Relaxed);
    let now = ctl.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    ctl.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let _guard = InFlight(&ctl.in_flight);

    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(v.to_str().unwrap_or_default().to_string()),
            )
        })
        .collect();
    let cookies: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            Some((k.to_string(), serde_json::Value::String(v.to_string())))
        })
        .collect();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let body = serde_json::json!({
        "server": &*ctx.name,
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "method": req.method().as_str(),
        "host": host,
        "headers": headers,
        "cookies": cookies,
    });
    {
        let mut seen = ctl.seen.lock().expect("request log");
        if seen.len() == REMEMBERED {
            seen.pop_front();
        }
        seen.push_back(body.clone());
    }

    let params = query_params(&req);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let mut status = match ctl.status.load(Ordering::Relaxed) {
        0 => 200,
        s => s,
    };
    let every = ctl.fail_every.load(Ordering::Relaxed);
    if every > 0 && (ctl.fail_count.fetch_add(1, Ordering::Relaxed) + 1) % every == 0 {
        status = 503;
    }
    if let Some(s) = param("status").and_then(|s| u16::try_from(s).ok()) {
        status = s;
    }
    let delay = param("delay_ms").unwrap_or_else(|| ctl.delay_ms.load(Ordering::Relaxed));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.name) {
        h.insert("x-upstream", v);
    }
    for (k, v) in &params {
        if k != "resp_header" {
            continue;
        }
        if let Some((n, v)) = v.split_once(':')
            && let (Ok(n), Ok(v)) = (HeaderName::try_from(n), HeaderValue::from_str(v))
        {
            h.append(n, v);
        }
    }
    resp
}

impl Upstream {
    /// Starts a server named `name` on `ip` at a free port.
    pub async fn start(name: &str, ip: IpAddr) -> Upstream {
        Self::start_on(name, SocketAddr::new(ip, 0)).await
    }

    /// Starts a server named `name` on `addr`.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("upstream {name} cannot bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let ctl = Arc::new(Control::default());
        let ctx = Ctx {
            name: name.into(),
            ctl: ctl.clone(),
        };
        let app = axum::Router::new().fallback(answer).with_state(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            name: name.to_string(),
            addr,
            ctl,
            task,
        }
    }

    /// Requests received so far (whatever they were answered).
    pub fn hits(&self) -> u64 {
        self.ctl.hits.load(Ordering::Relaxed)
    }

    /// The IP it listens on.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answers every request with `status` from now on (200 restores normal service).
    pub fn set_status(&self, status: u16) {
        self.ctl.status.store(status, Ordering::Relaxed);
    }

    /// Waits `delay` before answering each request from now on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.ctl
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answers every `n`-th request from now on with 503 (0: never).
    pub fn fail_every(&self, n: u64) {
        self.ctl.fail_count.store(0, Ordering::Relaxed);
        self.ctl.fail_every.store(n, Ordering::Relaxed);
    }

    /// The most requests it has had in progress at once.
    pub fn max_in_flight(&self) -> u64 {
        self.ctl.max_in_flight.load(Ordering::Relaxed)
    }

    /// What it saw of its last requests (up to 1000), oldest first: each the JSON body it
    /// answered with.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.ctl
            .seen
            .lock()
            .expect("request log")
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
