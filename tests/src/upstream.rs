//! Upstream test servers: each answers with its own name, so a test sees where a request
//! went.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::response::Json;
use tokio::task::JoinHandle;

/// A running upstream HTTP server.
pub struct Upstream {
    /// Its name, returned in every response.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Ctx {
    name: Arc<str>,
    hits: Arc<AtomicU64>,
}

async fn answer(State(ctx): State<Ctx>, req: Request) -> Json<serde_json::Value> {
    ctx.hits.fetch_add(1, Ordering::Relaxed);
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
    Json(serde_json::json!({
        "server": &*ctx.name,
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "method": req.method().as_str(),
        "headers": headers,
    }))
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
        let hits = Arc::new(AtomicU64::new(0));
        let ctx = Ctx {
            name: name.into(),
            hits: hits.clone(),
        };
        let app = axum::Router::new().fallback(answer).with_state(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            name: name.to_string(),
            addr,
            hits,
            task,
        }
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The IP it listens on.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
