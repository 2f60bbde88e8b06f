//! The load run: mesh, strait, proxies, idle window, churn, report.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use strait_load::churn::{ChurnMix, ChurnPlanner, Outcome, Tracker};
use strait_load::mesh::{MeshSpec, MeshState, proxy_ip};
use strait_load::prom;
use strait_load::proxy::{LoadShared, ProxyOptions, ProxySpec, run_proxy};
use strait_load::report::{Changes, Report, StraitMetrics, counters_per_change, per_type};
use strait_load::stats::Summary;
use tokio::sync::watch;
use tracing::{info, warn};

use super::child::{
    ServeSettings, StraitChild, default_strait_bin, http_client, metrics, wait_ready,
};
use super::sampler::{Reading, Sampler};

/// The mesh to generate.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct MeshArgs {
    /// Services.
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Pods (endpoints) per service.
    #[arg(long, default_value_t = 10)]
    pub pods_per_service: usize,
    /// HTTP ports per service.
    #[arg(long, default_value_t = 2)]
    pub ports_per_service: usize,
    /// Namespaces the services and proxies are spread over.
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    /// Also a DestinationRule (subsets v1/v2) and a VirtualService (90/10) per service; churn
    /// then edits VirtualService weights.
    #[arg(long)]
    pub with_routing: bool,
    /// Cluster DNS suffix.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
}

impl MeshArgs {
    /// The generator's spec.
    pub fn spec(&self) -> MeshSpec {
        MeshSpec {
            services: self.services,
            namespaces: self.namespaces.max(1),
            pods_per_service: self.pods_per_service,
            ports_per_service: self.ports_per_service.max(1),
            with_routing: self.with_routing,
            domain: self.domain.clone(),
        }
    }
}

/// Options of `strait-load generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The mesh.
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Where to write it (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
}

/// Writes the mesh into a directory.
pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir).with_context(|| args.out_dir.display().to_string())?;
    let mesh = MeshState::generate(&args.mesh.spec());
    mesh.write_all(&args.out_dir)?;
    println!(
        "wrote {} services into {}",
        mesh.services.len(),
        args.out_dir.display()
    );
    Ok(())
}

/// Options of a load run.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct RunArgs {
    /// The mesh.
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// Simulated proxies (each with its own gRPC connection).
    #[arg(long, default_value_t = 100)]
    pub proxies: usize,
    /// Incremental (Delta) ADS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// Changes per second during churn (0: no churn).
    #[arg(long, default_value_t = 1.0)]
    pub churn_rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Relative weights of the change kinds, `KIND=WEIGHT,…` (kinds left out weigh 0):
    /// scale_up, scale_down, readiness, config, new_service.
    #[arg(long, default_value_t = ChurnMix::default())]
    pub churn_mix: ChurnMix,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use a running strait at this ADS address instead of starting one.
    #[arg(long)]
    pub xds_address: Option<String>,
    /// The running strait's status API (for `/ready` and `/metrics`).
    #[arg(long, requires = "xds_address")]
    pub debug_address: Option<SocketAddr>,
    /// The directory the running strait serves: written by `strait-load generate` with the
    /// same mesh options (or empty: the mesh is written into it). Without it, no churn.
    #[arg(long, requires = "xds_address")]
    pub config_dir: Option<PathBuf>,
    /// The running strait's process id, to sample its CPU and memory.
    #[arg(long, requires = "xds_address")]
    pub strait_pid: Option<u32>,
    /// The strait binary to start (default: `strait` next to this executable).
    #[arg(long)]
    pub strait_bin: Option<PathBuf>,
    /// Fraction of responses NACKed during churn (0–1).
    #[arg(long, default_value_t = 0.0)]
    pub nack_fraction: f64,
    /// Proxies connected per second (0: all at once, at most --connect-concurrency
    /// handshakes in flight).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Connection handshakes in flight at once, at most.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// strait's debounce quiet period, ms.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// strait's debounce maximum delay, ms.
    #[arg(long, default_value_t = 1000)]
    pub debounce_max_ms: u64,
    /// strait's directory rescan interval, ms.
    #[arg(long, default_value_t = 2000)]
    pub poll_ms: u64,
    /// Seconds of idle (no churn) after the initial sync, to measure steady-state CPU.
    #[arg(long, default_value_t = 5.0)]
    pub idle_seconds: f64,
    /// Seconds a change may take to reach every proxy before it counts as timed out.
    #[arg(long, default_value_t = 10.0)]
    pub change_timeout: f64,
    /// Seconds allowed for every proxy to get its initial configuration.
    #[arg(long, default_value_t = 300.0)]
    pub sync_timeout: f64,
    /// `STRAIT_OUTBOUND_BIND` of the proxies (no traffic capture); `none` for capture mode.
    #[arg(long, default_value = "127.0.0.1")]
    pub outbound_bind: String,
    /// Decode every resource completely (as Envoy does) rather than only what the
    /// bookkeeping needs; costs the harness CPU that strait then lacks.
    #[arg(long)]
    pub full_decode: bool,
    /// Seed of the churn and NACK draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// `STRAIT_LOG` of the strait started.
    #[arg(long, default_value = "info")]
    pub strait_log: String,
    /// Extra argument for `strait serve` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub strait_arg: Vec<String>,
    /// Extra environment variable for `strait serve`, `KEY=VALUE` (repeatable), e.g.
    /// `MALLOC_ARENA_MAX=2`.
    #[arg(long)]
    pub strait_env: Vec<String>,
    /// Keep the temporary directory (mesh and strait's log) and print where it is.
    #[arg(long)]
    pub keep_dir: bool,
}

/// Runs a load test, prints the table, writes the report.
pub async fn main(args: RunArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    println!("{}", report.table());
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&report)?)
            .with_context(|| out.display().to_string())?;
        println!("report written to {}", out.display());
    }
    Ok(())
}

fn machine() -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    m.insert(
        "cpus".into(),
        serde_json::json!(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        ),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kb) = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        m.insert(
            "memory_gb".into(),
            serde_json::json!((kb / 1048576.0 * 10.0).round() / 10.0),
        );
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
    {
        m.insert("cpu_model".into(), serde_json::json!(model.1.trim()));
    }
    m
}

fn to_mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// strait's counters from a `/metrics` reading.
fn strait_counters(s: &[prom::Sample]) -> StraitMetrics {
    let types = |name: &str| {
        let mut m: BTreeMap<String, f64> = ["CDS", "EDS", "LDS", "RDS"]
            .iter()
            .map(|t| {
                (
                    t.to_string(),
                    prom::value(s, name, &format!("type=\"{t}\"")),
                )
            })
            .collect();
        m.insert("total".into(), prom::value(s, name, ""));
        m
    };
    let pushes = prom::value(s, "strait_pushes_total", "");
    let push_seconds = prom::value(s, "strait_push_duration_seconds_sum", "");
    StraitMetrics {
        pushes,
        push_seconds,
        push_seconds_mean: 0.0,
        responses: types("strait_xds_responses_total"),
        bytes: types("strait_xds_response_bytes_total"),
        nacks: prom::value(s, "strait_xds_nacks_total", ""),
    }
}

fn metrics_since(a: &StraitMetrics, b: &StraitMetrics) -> StraitMetrics {
    let sub = |x: &BTreeMap<String, f64>, y: &BTreeMap<String, f64>| {
        y.iter()
            .map(|(k, v)| (k.clone(), v - x.get(k).copied().unwrap_or_default()))
            .collect()
    };
    let pushes = b.pushes - a.pushes;
    let push_seconds = b.push_seconds - a.push_seconds;
    StraitMetrics {
        pushes,
        push_seconds,
        push_seconds_mean: if pushes > 0.0 {
            push_seconds / pushes
        } else {
            0.0
        },
        responses: sub(&a.responses, &b.responses),
        bytes: sub(&a.bytes, &b.bytes),
        nacks: b.nacks - a.nacks,
    }
}

/// Where the control plane is and how to reach it.
struct Target {
    xds: String,
    debug: Option<SocketAddr>,
    pid: Option<u32>,
    dir: Option<PathBuf>,
    child: Option<StraitChild>,
    /// Holds the temporary directory (mesh, log) while the run lasts.
    tmp: Option<tempfile::TempDir>,
}

async fn start_target(
    args: &RunArgs,
    mesh: &MeshState,
    http: &reqwest::Client,
) -> anyhow::Result<Target> {
    if let Some(xds) = &args.xds_address {
        let dir = args.config_dir.clone();
        if let Some(dir) = &dir {
            let empty = std::fs::read_dir(dir)
                .with_context(|| dir.display().to_string())?
                .next()
                .is_none();
            if empty {
                info!(dir = %dir.display(), "writing the mesh into the served directory");
                mesh.write_all(dir)?;
                // Let strait read and push it.
                tokio::time::sleep(Duration::from_millis(args.debounce_max_ms + 2000)).await;
            } else if !dir.join("cluster.yaml").exists() {
                bail!(
                    "{} is not a mesh written by strait-load generate (no cluster.yaml)",
                    dir.display()
                );
            }
        } else {
            warn!("no --config-dir: strait's directory is unknown, so there is no churn");
        }
        if let Some(debug) = args.debug_address {
            wait_ready(http, debug, None, Duration::from_secs(120)).await?;
        }
        return Ok(Target {
            xds: xds.clone(),
            debug: args.debug_address,
            pid: args.strait_pid,
            dir,
            child: None,
            tmp: None,
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix("strait-load-")
        .tempdir()
        .context("temporary directory")?;
    let dir = tmp.path().join("mesh");
    std::fs::create_dir_all(&dir)?;
    let t0 = Instant::now();
    mesh.write_all(&dir)?;
    info!(services = mesh.services.len(), dir = %dir.display(), elapsed = ?t0.elapsed(), "mesh written");
    let bin = args.strait_bin.clone().unwrap_or_else(default_strait_bin);
    let settings = ServeSettings {
        debounce_ms: args.debounce_ms,
        debounce_max_ms: args.debounce_max_ms,
        poll_ms: args.poll_ms,
        log_filter: args.strait_log.clone(),
        extra: args.strait_arg.clone(),
        env: args
            .strait_env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(anyhow::anyhow!("--strait-env {kv}: expected KEY=VALUE")),
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let mut child = StraitChild::start(&bin, &dir, &tmp.path().join("strait.log"), &settings)?;
    let took = wait_ready(
        http,
        child.debug,
        Some(&mut child),
        Duration::from_secs(300),
    )
    .await?;
    info!(?took, "strait ready");
    Ok(Target {
        xds: child.xds.to_string(),
        debug: Some(child.debug),
        pid: Some(child.pid),
        dir: Some(dir),
        child: Some(child),
        tmp: Some(tmp),
    })
}

async fn strait_metrics(http: &reqwest::Client, t: &Target) -> Option<StraitMetrics> {
    let debug = t.debug?;
    match metrics(http, debug).await {
        Ok(s) => Some(strait_counters(&s)),
        Err(error) => {
            warn!(%error, "cannot read strait's metrics");
            None
        }
    }
}

fn check_alive(t: &mut Target) -> anyhow::Result<()> {
    if let Some(c) = t.child.as_mut() {
        c.check_alive()?;
    }
    Ok(())
}

/// The whole run.
pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if !(0.0..=1.0).contains(&args.nack_fraction) {
        bail!("--nack-fraction must be between 0 and 1");
    }
    if args.churn_rate < 0.0 || args.duration < 0.0 {
        bail!("--churn-rate and --duration cannot be negative");
    }
    let outbound_bind: Option<IpAddr> = match args.outbound_bind.as_str() {
        "none" | "" => None,
        ip => Some(
            ip.parse()
                .context("--outbound-bind: an IP address or `none`")?,
        ),
    };
    let wall = Instant::now();
    let spec = args.mesh.spec();
    let mut mesh = MeshState::generate(&spec);
    let http = http_client()?;
    let mut target = start_target(args, &mesh, &http).await?;
    let sampler = Sampler::start(target.pid, Duration::from_millis(200));

    // Memory once the mesh is loaded, before any proxy.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sampler.now();

    // Connect.
    let start = Instant::now();
    let tracker = Arc::new(Tracker::new(start));
    let opts = ProxyOptions {
        xds: target.xds.clone(),
        delta: args.delta,
        nack_fraction: args.nack_fraction,
        full_decode: args.full_decode,
        seed: args.seed,
        connect_timeout: Duration::from_secs(20),
        connect_concurrency: args.connect_concurrency,
    };
    let shared = LoadShared::new(opts, tracker.clone(), start);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(args.proxies);
    let r_start = sampler.now();
    info!(proxies = args.proxies, delta = args.delta, xds = %target.xds, "connecting proxies");
    let deadline = start + Duration::from_secs_f64(args.sync_timeout);
    let mut last_log = Instant::now();
    for i in 0..args.proxies {
        let ns = spec.namespace(i);
        let p = ProxySpec::sidecar(
            i,
            IpAddr::V4(proxy_ip(i as u32)),
            &ns,
            &spec.domain,
            outbound_bind,
        );
        tasks.push(tokio::spawn(run_proxy(p, shared.clone(), stop_rx.clone())));
        if args.connect_rate > 0.0 {
            tokio::time::sleep_until(
                (start + Duration::from_secs_f64((i + 1) as f64 / args.connect_rate)).into(),
            )
            .await;
        }
    }
    loop {
        let synced = shared.synced.load(Ordering::Acquire);
        if synced >= args.proxies {
            break;
        }
        if Instant::now() > deadline {
            warn!(
                synced,
                proxies = args.proxies,
                "not every proxy was configured in time"
            );
            break;
        }
        check_alive(&mut target)?;
        if last_log.elapsed() > Duration::from_secs(5) {
            last_log = Instant::now();
            info!(
                synced,
                connected = shared.connected.load(Ordering::Relaxed),
                errors = shared.errors.load(Ordering::Relaxed),
                elapsed = ?start.elapsed(),
                "initial sync"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let synced = shared.synced.load(Ordering::Acquire);
    let initial_sync = (synced >= args.proxies).then(|| shared.last_sync().as_secs_f64());
    let r_synced = sampler.now();
    let initial = shared.counters.snapshot();
    info!(synced, seconds = ?initial_sync, "initial sync done");

    // Memory with every proxy connected (after a moment for allocations to settle), then
    // CPU over an idle window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = sampler.now();
    let idle = Duration::from_secs_f64(args.idle_seconds.max(0.0));
    let r_idle0 = sampler.now();
    tokio::time::sleep(idle).await;
    let r_idle1 = sampler.now();
    check_alive(&mut target)?;

    // Churn.
    let m0 = strait_metrics(&http, &target).await;
    let c0 = shared.counters.snapshot();
    let r_churn0 = sampler.now();
    let timeout = Duration::from_secs_f64(args.change_timeout.max(0.1));
    let mut written = 0usize;
    if let Some(dir) = target.dir.clone()
        && args.churn_rate > 0.0
        && args.duration > 0.0
    {
        shared.nack_enabled.store(true, Ordering::Release);
        let count = (args.churn_rate * args.duration).round().max(1.0) as usize;
        let mut planner = ChurnPlanner::new(args.seed, args.churn_mix);
        let churn_start = Instant::now();
        info!(changes = count, rate = args.churn_rate, "churn");
        for k in 0..count {
            tokio::time::sleep_until(
                (churn_start + Duration::from_secs_f64(k as f64 / args.churn_rate)).into(),
            )
            .await;
            check_alive(&mut target)?;
            tracker.sweep(Instant::now(), timeout);
            let busy = tracker.busy_services();
            let change = planner.plan(&mut mesh, &busy);
            let required = shared.synced.load(Ordering::Acquire);
            let pending = tracker.begin(&change, required);
            write_change(&mesh, &dir, change.service)?;
            if let Some(p) = &pending {
                tracker.written(p, Instant::now());
            }
            written += 1;
        }
        // Drain: every change converges or times out.
        let drain_deadline = Instant::now() + timeout + Duration::from_secs(1);
        while tracker.sweep(Instant::now(), timeout) > 0 && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracker.sweep(Instant::now(), Duration::ZERO);
        shared.nack_enabled.store(false, Ordering::Release);
    }
    let r_churn1 = sampler.now();
    let churn_counters = shared.counters.snapshot().since(&c0);
    let m1 = strait_metrics(&http, &target).await;

    // Stop the proxies.
    let _ = stop_tx.send(true);
    let stop_deadline = Instant::now() + Duration::from_secs(5);
    for t in tasks {
        let left = stop_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            break;
        }
    }
    let end = sampler.now();
    let (peak_strait, peak_own) = sampler.peaks_kb();

    // Report.
    let outcomes = tracker.outcomes();
    let changes = Changes::of(&outcomes);
    let convergence = Summary::of(outcomes.iter().filter_map(|o| o.converged_ms));
    let endpoint = |at: fn(&Outcome) -> Option<f64>| {
        Summary::of(
            outcomes
                .iter()
                .filter(|o| o.kind.is_endpoint() && o.converged_ms.is_some())
                .filter_map(at),
        )
    };
    let endpoint_convergence = endpoint(|o| o.converged_ms);
    let totals = shared.counters.snapshot();
    let (responses_per_change, bytes_per_change) = counters_per_change(&churn_counters, written);
    let cpu = |a: &Reading, b: &Reading| sampler.cpu_between(a, b);
    let rss_mb = |r: &Reading| r.strait.map(|s| to_mb(s.rss_kb));
    let per_proxy_kb = match (before.strait, connected.strait) {
        (Some(b), Some(c)) if args.proxies > 0 => {
            Some((c.rss_kb as f64 - b.rss_kb as f64) / args.proxies as f64)
        }
        _ => None,
    };
    let churn_metrics = match (&m0, &m1) {
        (Some(a), Some(b)) => Some(metrics_since(a, b)),
        _ => None,
    };
    let report = Report {
        tool: "strait-load".into(),
        machine: machine(),
        params: serde_json::to_value(args)?,
        services: spec.services,
        services_at_end: mesh.services.len(),
        proxies: args.proxies,
        delta: args.delta,
        proxies_synced: synced,
        initial_sync_seconds: initial_sync,
        initial_sync_per_proxy_ms: Summary::of(shared.sync_times_ms()),
        initial_bytes: per_type(initial.bytes, 1.0),
        convergence_p99_beyond_debounce_ms: (convergence.p99 - args.debounce_ms as f64).max(0.0),
        convergence_ms: convergence,
        endpoint_p99_beyond_debounce_ms: (endpoint_convergence.p99 - args.debounce_ms as f64)
            .max(0.0),
        endpoint_convergence_ms: endpoint_convergence,
        endpoint_first_ack_ms: endpoint(|o| o.first_ack_ms),
        endpoint_half_ack_ms: endpoint(|o| o.half_ack_ms),
        changes,
        strait_rss_before_proxies_mb: rss_mb(&before),
        strait_rss_connected_mb: rss_mb(&connected),
        strait_peak_rss_mb: peak_strait.map(to_mb),
        strait_hwm_mb: end.strait.map(|s| to_mb(s.hwm_kb)),
        strait_rss_per_proxy_kb: per_proxy_kb,
        strait_cpu_seconds: cpu(&r_start, &end).0,
        strait_cpu_initial_sync_seconds: cpu(&r_start, &r_synced).0,
        strait_steady_cpu_seconds: cpu(&r_idle0, &r_idle1).0,
        steady_window_seconds: idle.as_secs_f64(),
        strait_cpu_churn_seconds: cpu(&r_churn0, &r_churn1).0,
        load_cpu_seconds: cpu(&r_start, &end).1,
        load_cpu_churn_seconds: cpu(&r_churn0, &r_churn1).1,
        other_cpu_seconds: sampler.others_between(&r_start, &end),
        other_cpu_churn_seconds: sampler.others_between(&r_churn0, &r_churn1),
        load_peak_rss_mb: to_mb(peak_own),
        load_mimalloc_purge_delay: std::env::var(crate::PURGE_DELAY).ok(),
        bytes_sent: per_type(totals.bytes, 1.0),
        responses: per_type(totals.responses, 1.0),
        responses_per_change,
        bytes_per_change,
        strait_pushes_per_change: churn_metrics
            .as_ref()
            .filter(|_| written > 0)
            .map(|m| m.pushes / written as f64),
        strait_churn_metrics: churn_metrics,
        nacks_sent: shared.nacks.load(Ordering::Relaxed),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        last_error: shared
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        outcomes,
    };
    drop(sampler);
    // strait goes now, before the temporary directory.
    drop(target.child.take());
    if args.keep_dir
        && let Some(tmp) = target.tmp.take()
    {
        let kept = tmp.keep();
        println!("kept {} (mesh/ and strait.log)", kept.display());
    }
    Ok(report)
}

fn write_change(mesh: &MeshState, dir: &Path, service: usize) -> anyhow::Result<()> {
    mesh.write_service(dir, service)?;
    Ok(())
}
