//! Test harness for end-to-end tests: strait in-process, stock Envoy as a child process,
//! upstream HTTP servers, all on loopback. Every process a test starts is killed when its
//! handle drops, also when the test fails.

pub mod envoy;
pub mod fakeapi;
pub mod mesh;
pub mod upstream;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use envoy::Envoy;
pub use mesh::Strait;
pub use upstream::Upstream;

/// Installs a test log subscriber once (`RUST_LOG` to see strait's logs).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A loopback address no other test of this run uses (`127.x.y.z`), so tests can bind the
/// same ports side by side.
pub fn loopback_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = std::process::id() % 200 + 20;
    Ipv4Addr::new(127, base as u8, (n / 250) as u8, (n % 250 + 2) as u8)
}

/// Retries `check` until it succeeds or `timeout` passes; panics with the last failure.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            panic!("{what}: not true after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a file atomically (write to a temporary name, then rename), as editors and
/// `kubectl`-style tools do.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// An HTTP client that never reuses connections across tests and does not follow redirects.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client")
}

/// The `strait` binary cargo built next to the running test (or `STRAIT_BIN`).
pub fn strait_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRAIT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("strait");
    assert!(
        bin.exists(),
        "{} missing: build with cargo build -p strait",
        bin.display()
    );
    bin
}

/// A child process killed (and reaped) when dropped, also when the test fails.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An address on `ip` with a port free right now (for a child process to bind).
pub fn free_port(ip: IpAddr) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
}
