//! `strait serve` as a child process (killed when its guard drops, on every exit path), and
//! the status API calls the harness makes to it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use strait_load::prom;
use tracing::info;

/// Settings passed to `strait serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Debounce quiet period, ms.
    pub debounce_ms: u64,
    /// Debounce maximum delay, ms.
    pub debounce_max_ms: u64,
    /// Directory rescan interval, ms.
    pub poll_ms: u64,
    /// `STRAIT_LOG`.
    pub log_filter: String,
    /// Extra arguments.
    pub extra: Vec<String>,
    /// Extra environment variables (`KEY=VALUE`), e.g. allocator settings.
    pub env: Vec<(String, String)>,
}

/// A running `strait serve`. Killed (and reaped) on drop.
pub struct StraitChild {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// ADS address.
    pub xds: SocketAddr,
    /// Status API address.
    pub debug: SocketAddr,
    /// Its stderr.
    pub log: PathBuf,
}

/// A free port on 127.0.0.1 (bound and released; the child binds it right after).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("find a free port")?;
    Ok(l.local_addr()?)
}

/// The `strait` binary next to this executable (cargo builds both into the same directory).
pub fn default_strait_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("strait")))
        .unwrap_or_else(|| PathBuf::from("strait"))
}

impl StraitChild {
    /// Starts `bin serve` on `config_dir`, on free loopback ports, logging to `log`.
    pub fn start(
        bin: &Path,
        config_dir: &Path,
        log: &Path,
        s: &ServeSettings,
    ) -> anyhow::Result<StraitChild> {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build -p strait, with --release for \
                 measurements), or pass --strait-bin",
                bin.display()
            );
        }
        let (xds, debug_addr) = (free_port()?, free_port()?);
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config-dir")
            .arg(config_dir)
            .args(["--xds-addr", &xds.to_string()])
            .args(["--debug-addr", &debug_addr.to_string()])
            .args(["--webhook-addr", "off"])
            .args(["--debounce-ms", &s.debounce_ms.to_string()])
            .args(["--debounce-max-ms", &s.debounce_max_ms.to_string()])
            .args(["--poll-ms", &s.poll_ms.to_string()])
            .args(&s.extra)
            .env("STRAIT_LOG", &s.log_filter)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child.id();
        info!(pid, %xds, %debug_addr, log = %log.display(), "strait started");
        Ok(StraitChild {
            child,
            pid,
            xds,
            debug: debug_addr,
            log: log.to_path_buf(),
        })
    }

    /// Fails (with the end of its log) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "strait exited ({status}); end of its log:\n{}",
                tail(&self.log, 30)
            );
        }
        Ok(())
    }
}

impl Drop for StraitChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An HTTP client for the status API (short timeouts: everything is on loopback).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .context("HTTP client")
}

/// Waits until `/ready` answers 200, for at most `timeout`.
pub async fn wait_ready(
    http: &reqwest::Client,
    debug: SocketAddr,
    mut child: Option<&mut StraitChild>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Some(c) = child.as_deref_mut() {
            c.check_alive()?;
        }
        if let Ok(r) = http.get(format!("http://{debug}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("strait not ready after {timeout:?} ({debug}/ready)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// strait's `/metrics`.
pub async fn metrics(
    http: &reqwest::Client,
    debug: SocketAddr,
) -> anyhow::Result<Vec<prom::Sample>> {
    let text = http
        .get(format!("http://{debug}/metrics"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .context("GET /metrics")?
        .text()
        .await?;
    Ok(prom::parse(&text))
}

/// strait's `/debug/syncz`, as JSON.
pub async fn syncz(http: &reqwest::Client, debug: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let r = http
        .get(format!("http://{debug}/debug/syncz"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .context("GET /debug/syncz")?;
    Ok(r.json().await?)
}
