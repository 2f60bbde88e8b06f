//! `strait-load envoy-check`: strait with a small mesh and many stock Envoy processes. It
//! times the initial configuration of every Envoy, then a series of endpoint changes until
//! every Envoy's admin interface shows them (and until strait's `/debug/syncz` shows every
//! proxy ACKed them), and reports strait's memory.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use strait_load::mesh::{MeshSpec, MeshState, envoy_bind_ip, envoy_ip};
use strait_load::stats::Summary;
use strait_translate::bootstrap::{BootstrapOptions, bootstrap};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::child::{
    ServeSettings, StraitChild, default_strait_bin, http_client, syncz, tail, wait_ready,
};
use super::sampler::Sampler;

/// Options of `envoy-check`.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct EnvoyCheckArgs {
    /// Stock Envoy processes to start.
    #[arg(long, default_value_t = 50)]
    pub envoys: usize,
    /// The Envoy binary (default: `STRAIT_ENVOY`, else the newest under
    /// `~/.cache/strait/envoy/<version>/envoy/_bin/envoy`, else `envoy` on the PATH).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Services in the mesh.
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// Pods per service.
    #[arg(long, default_value_t = 3)]
    pub pods_per_service: usize,
    /// HTTP ports per service.
    #[arg(long, default_value_t = 2)]
    pub ports_per_service: usize,
    /// Namespaces.
    #[arg(long, default_value_t = 2)]
    pub namespaces: usize,
    /// Endpoint changes to time (alternately adding a pod and removing it).
    #[arg(long, default_value_t = 6)]
    pub changes: usize,
    /// Incremental (Delta) ADS.
    #[arg(long)]
    pub delta: bool,
    /// The strait binary (default: `strait` next to this executable).
    #[arg(long)]
    pub strait_bin: Option<PathBuf>,
    /// strait's debounce quiet period, ms.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Seconds allowed for the Envoys to start and for each change.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the temporary directory (mesh, logs) and print where it is.
    #[arg(long)]
    pub keep_dir: bool,
}

/// Finds Envoy as the end-to-end tests do.
pub fn find_envoy(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    strait_translate::bootstrap::installed_envoy().ok_or_else(|| {
        anyhow::anyhow!(
            "no Envoy binary: pass --envoy, set STRAIT_ENVOY, or install one with `cargo xtask envoy`"
        )
    })
}

/// A stock Envoy. Killed (and reaped) on drop.
struct EnvoyProc {
    child: Child,
    pid: u32,
    name: String,
    dir: PathBuf,
    admin: Option<SocketAddr>,
    live_at: Option<Instant>,
}

impl Drop for EnvoyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EnvoyProc {
    fn start(bin: &Path, dir: &Path, name: &str, boot: &serde_json::Value) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("bootstrap.json");
        std::fs::write(&config, serde_json::to_vec_pretty(boot)?)?;
        let log = std::fs::File::create(dir.join("envoy.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .arg("--admin-address-path")
            .arg(dir.join("admin-address"))
            .args(["--log-level", "warning", "--drain-time-s", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        Ok(EnvoyProc {
            pid: child.id(),
            child,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            admin: None,
            live_at: None,
        })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "Envoy {} exited ({status}):\n{}",
                self.name,
                tail(&self.dir.join("envoy.log"), 20)
            );
        }
        Ok(())
    }
}

/// What one change took.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeTiming {
    /// The cluster changed.
    pub cluster: String,
    /// Hosts every Envoy must show.
    pub expected_hosts: usize,
    /// Write → the last Envoy's admin shows it, ms (`None`: timed out).
    pub envoys_ms: Option<f64>,
    /// Write → syncz shows every proxy ACKed a new EDS response, ms.
    pub syncz_ms: Option<f64>,
    /// Envoys that showed it in time.
    pub envoys_done: usize,
}

/// The envoy-check report.
#[derive(Debug, Clone, Serialize)]
pub struct EnvoyCheckReport {
    /// Parameters.
    pub params: EnvoyCheckArgs,
    /// The Envoy binary.
    pub envoy_binary: String,
    /// Envoys started.
    pub envoys: usize,
    /// Envoys that became LIVE (initial configuration received).
    pub envoys_live: usize,
    /// Seconds from starting the first Envoy until every one was LIVE.
    pub initial_seconds: Option<f64>,
    /// Every change.
    pub changes: Vec<ChangeTiming>,
    /// Write → all Envoys show it, ms.
    pub convergence_ms: Summary,
    /// Write → syncz shows every proxy ACKed, ms.
    pub syncz_convergence_ms: Summary,
    /// strait's RSS before any Envoy, MB.
    pub strait_rss_before_mb: Option<f64>,
    /// strait's RSS with every Envoy connected, MB.
    pub strait_rss_connected_mb: Option<f64>,
    /// strait's peak RSS, MB.
    pub strait_peak_rss_mb: Option<f64>,
    /// Mean RSS of one Envoy, MB.
    pub envoy_rss_mean_mb: f64,
    /// `update_rejected` summed over every Envoy (must be 0).
    pub envoy_rejections: u64,
    /// Proxies strait shows with a NACK.
    pub strait_nacked_proxies: usize,
}

async fn get(http: &reqwest::Client, url: String) -> Option<String> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// `cluster.<name>.membership_total` of `cluster` in Envoy's `/stats` text.
fn membership(stats: &str, cluster: &str) -> Option<u64> {
    let key = format!("cluster.{cluster}.membership_total: ");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

/// EDS responses sent per proxy, and whether each is SYNCED on EDS.
fn eds_state(z: &serde_json::Value) -> HashMap<String, (u64, bool)> {
    z["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let id = p["proxy"].as_str()?.to_string();
            let eds = &p["types"]["EDS"];
            Some((
                id,
                (
                    eds["responses"].as_u64().unwrap_or(0),
                    eds["state"].as_str() == Some("SYNCED"),
                ),
            ))
        })
        .collect()
}

/// Runs the check and prints/writes its report.
pub async fn main(args: EnvoyCheckArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    let c = &report.convergence_ms;
    let z = &report.syncz_convergence_ms;
    let opt = |v: Option<f64>, u: &str| v.map(|x| format!("{x:.1} {u}")).unwrap_or("n/a".into());
    println!(
        "envoy-check: {} stock Envoys ({}), {} services, {}",
        report.envoys,
        report.envoy_binary,
        args.services,
        if args.delta { "Delta" } else { "SotW" }
    );
    println!(
        "  {:<40} {}/{}",
        "Envoys LIVE", report.envoys_live, report.envoys
    );
    println!(
        "  {:<40} {}",
        "all Envoys LIVE after",
        opt(report.initial_seconds, "s")
    );
    println!(
        "  {:<40} {:.0} / {:.0} / {:.0} ms ({} changes)",
        "change → all Envoys p50/p99/max", c.p50, c.p99, c.max, c.count
    );
    println!(
        "  {:<40} {:.0} / {:.0} / {:.0} ms",
        "change → all ACKed (syncz) p50/p99/max", z.p50, z.p99, z.max
    );
    println!(
        "  {:<40} {} / {} / {}",
        "strait RSS before / connected / peak",
        opt(report.strait_rss_before_mb, "MB"),
        opt(report.strait_rss_connected_mb, "MB"),
        opt(report.strait_peak_rss_mb, "MB")
    );
    println!(
        "  {:<40} {:.1} MB",
        "Envoy RSS (mean)", report.envoy_rss_mean_mb
    );
    println!(
        "  {:<40} {} / {}",
        "Envoy rejections / NACKed proxies", report.envoy_rejections, report.strait_nacked_proxies
    );
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)
            .with_context(|| out.display().to_string())?;
        println!("report written to {}", out.display());
    }
    if report.envoys_live < report.envoys || report.envoy_rejections > 0 {
        bail!("not every Envoy was configured cleanly");
    }
    Ok(())
}

async fn run(args: &EnvoyCheckArgs) -> anyhow::Result<EnvoyCheckReport> {
    let envoy_bin = find_envoy(args.envoy.as_deref())?;
    let spec = MeshSpec {
        services: args.services.max(1),
        namespaces: args.namespaces.max(1),
        pods_per_service: args.pods_per_service,
        ports_per_service: args.ports_per_service.max(1),
        with_routing: false,
        domain: "cluster.local".into(),
    };
    let mut mesh = MeshState::generate(&spec);
    let tmp = tempfile::Builder::new()
        .prefix("strait-envoy-check-")
        .tempdir()?;
    let dir = tmp.path().join("mesh");
    std::fs::create_dir_all(&dir)?;
    mesh.write_all(&dir)?;
    let http = http_client()?;
    let bin = args.strait_bin.clone().unwrap_or_else(default_strait_bin);
    let settings = ServeSettings {
        debounce_ms: args.debounce_ms,
        debounce_max_ms: 1000,
        poll_ms: 2000,
        log_filter: "info".into(),
        extra: Vec::new(),
        env: Vec::new(),
    };
    let mut strait = StraitChild::start(&bin, &dir, &tmp.path().join("strait.log"), &settings)?;
    wait_ready(
        &http,
        strait.debug,
        Some(&mut strait),
        Duration::from_secs(60),
    )
    .await?;
    let sampler = Sampler::start(Some(strait.pid), Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sampler.now();
    let timeout = Duration::from_secs_f64(args.timeout.max(1.0));

    // Start every Envoy.
    let t0 = Instant::now();
    let mut envoys: Vec<EnvoyProc> = Vec::with_capacity(args.envoys);
    for i in 0..args.envoys {
        let ns = spec.namespace(i);
        let name = format!("envoy-{i}");
        let boot = bootstrap(&BootstrapOptions {
            xds_address: strait.xds.to_string(),
            node_id: format!(
                "sidecar~{}~{name}.{ns}~{ns}.svc.{}",
                envoy_ip(i as u32),
                spec.domain
            ),
            node_cluster: format!("{name}.{ns}"),
            namespace: Some(ns.clone()),
            outbound_bind: Some(IpAddr::V4(envoy_bind_ip(i as u32))),
            admin_port: 0,
            delta: args.delta,
            ..Default::default()
        });
        envoys.push(EnvoyProc::start(
            &envoy_bin,
            &tmp.path().join(&name),
            &name,
            &boot,
        )?);
    }
    info!(envoys = envoys.len(), binary = %envoy_bin.display(), "Envoys started");
    // Wait until every Envoy is LIVE.
    while envoys.iter().any(|e| e.live_at.is_none()) && t0.elapsed() < timeout {
        strait.check_alive()?;
        for e in envoys.iter_mut().filter(|e| e.live_at.is_none()) {
            e.check_alive()?;
            if e.admin.is_none() {
                e.admin = std::fs::read_to_string(e.dir.join("admin-address"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok());
            }
            if let Some(admin) = e.admin
                && http
                    .get(format!("http://{admin}/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                e.live_at = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = envoys.iter().filter(|e| e.live_at.is_some()).count();
    let initial_seconds = (live == envoys.len()).then(|| {
        envoys
            .iter()
            .filter_map(|e| e.live_at)
            .max()
            .map(|t| t.duration_since(t0).as_secs_f64())
            .unwrap_or(0.0)
    });
    info!(live, seconds = ?initial_seconds, "Envoys configured");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = sampler.now();
    let envoy_rss: Vec<f64> = envoys
        .iter()
        .filter_map(|e| strait_load::procfs::sample(Some(e.pid)).ok())
        .map(|s| s.rss_kb as f64 / 1024.0)
        .collect();

    // Changes: add a pod to a service, then remove it again, and so on.
    let mut timings = Vec::new();
    let mut added: Option<(usize, String)> = None;
    for c in 0..args.changes {
        let svc = match &added {
            Some((s, ip)) => {
                let s = *s;
                mesh.services[s].pods.retain(|p| p.ip.to_string() != *ip);
                added = None;
                s
            }
            None => {
                let s = (c * 7) % mesh.services.len();
                let pod = mesh.add_pod(s);
                added = Some((s, pod.ip.to_string()));
                s
            }
        };
        let cluster = mesh.services[svc].cluster_names(&spec.domain)[0].clone();
        let expected = mesh.services[svc].pods.iter().filter(|p| p.ready).count();
        let eds_before = eds_state(&syncz(&http, strait.debug).await?);
        mesh.write_service(&dir, svc)?;
        let written = Instant::now();
        let deadline = written + timeout;

        // strait's view: every proxy got a new EDS response and ACKed it.
        let syncz_task = {
            let http = http.clone();
            let debug = strait.debug;
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    if let Ok(z) = syncz(&http, debug).await {
                        let now = eds_state(&z);
                        if !now.is_empty()
                            && now.iter().all(|(id, (n, synced))| {
                                *synced && *n > eds_before.get(id).map(|b| b.0).unwrap_or(0)
                            })
                        {
                            return Some(written.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            })
        };
        // Envoy's view: the cluster's membership is what the mesh now says.
        let mut done: Vec<Option<Instant>> = vec![None; envoys.len()];
        while done.iter().any(Option::is_none) && Instant::now() < deadline {
            let mut set = JoinSet::new();
            for (i, e) in envoys.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                let Some(admin) = e.admin else { continue };
                let http = http.clone();
                let cluster = cluster.clone();
                set.spawn(async move {
                    let stats = get(
                        &http,
                        format!("http://{admin}/stats?filter=membership_total"),
                    )
                    .await;
                    let ok = stats.and_then(|s| membership(&s, &cluster)) == Some(expected as u64);
                    (i, ok.then(Instant::now))
                });
            }
            while let Some(r) = set.join_next().await {
                if let Ok((i, Some(at))) = r {
                    done[i] = Some(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let envoys_done = done.iter().filter(|d| d.is_some()).count();
        let envoys_ms = (envoys_done == envoys.len()).then(|| {
            done.iter()
                .flatten()
                .max()
                .map(|t| t.duration_since(written).as_secs_f64() * 1e3)
                .unwrap_or(0.0)
        });
        let syncz_ms = syncz_task.await.ok().flatten();
        info!(change = c, %cluster, expected, ?envoys_ms, ?syncz_ms, envoys_done, "change timed");
        timings.push(ChangeTiming {
            cluster,
            expected_hosts: expected,
            envoys_ms,
            syncz_ms,
            envoys_done,
        });
        // Let the debounce window close before the next change.
        tokio::time::sleep(Duration::from_millis(args.debounce_ms * 3 + 200)).await;
    }

    // Nothing rejected, by Envoy's count and by strait's.
    let mut rejections = 0u64;
    for e in &envoys {
        let Some(admin) = e.admin else { continue };
        if let Some(s) = get(
            &http,
            format!("http://{admin}/stats?filter=update_rejected"),
        )
        .await
        {
            rejections += s
                .lines()
                .filter_map(|l| {
                    l.rsplit_once(": ")
                        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                })
                .sum::<u64>();
        }
    }
    let z = syncz(&http, strait.debug).await?;
    let nacked = z["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["types"]
                .as_object()
                .is_some_and(|t| t.values().any(|s| !s["nack"].is_null()))
        })
        .count();
    if rejections > 0 || nacked > 0 {
        warn!(rejections, nacked, "configuration was rejected");
    }
    let end = sampler.now();
    let (peak, _) = sampler.peaks_kb();
    let mb = |kb: u64| kb as f64 / 1024.0;
    let report = EnvoyCheckReport {
        params: args.clone(),
        envoy_binary: envoy_bin.display().to_string(),
        envoys: envoys.len(),
        envoys_live: live,
        initial_seconds,
        convergence_ms: Summary::of(timings.iter().filter_map(|t| t.envoys_ms)),
        syncz_convergence_ms: Summary::of(timings.iter().filter_map(|t| t.syncz_ms)),
        changes: timings,
        strait_rss_before_mb: before.strait.map(|s| mb(s.rss_kb)),
        strait_rss_connected_mb: connected.strait.map(|s| mb(s.rss_kb)),
        strait_peak_rss_mb: peak.map(mb).or(end.strait.map(|s| mb(s.hwm_kb))),
        envoy_rss_mean_mb: if envoy_rss.is_empty() {
            0.0
        } else {
            envoy_rss.iter().sum::<f64>() / envoy_rss.len() as f64
        },
        envoy_rejections: rejections,
        strait_nacked_proxies: nacked,
    };
    drop(sampler);
    drop(envoys);
    drop(strait);
    if args.keep_dir {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_from_stats() {
        let stats = "cluster.outbound|8080||a.ns.svc.cluster.local.membership_total: 3\n\
                     cluster.outbound|8081||a.ns.svc.cluster.local.membership_total: 4\n";
        assert_eq!(
            membership(stats, "outbound|8081||a.ns.svc.cluster.local"),
            Some(4)
        );
        assert_eq!(
            membership(stats, "outbound|9||a.ns.svc.cluster.local"),
            None
        );
    }
}
