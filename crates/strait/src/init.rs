//! `strait init`: what the injected init container runs. It reads the pod's identity from
//! the downward API, writes the Envoy bootstrap into the shared volume, copies the `strait`
//! binary there (for Envoy's hooks), and loads the capture rules with `iptables-restore`.
//! `--dry-run` prints the rules and the bootstrap instead.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use strait_inject::init::{InitConfig, InitPlan, PodIdentity, plan};
use strait_inject::iptables::{self, Capture};
use strait_inject::keys;

/// Options of `strait init` (the injector sets them from the pod's annotations).
#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// The revision that injected the pod.
    #[arg(long, default_value = "default")]
    pub revision: String,
    /// The tag the pod was injected through.
    #[arg(long)]
    pub tag: Option<String>,
    /// The control plane's xDS address.
    #[arg(long, default_value = "strait-default.istio-system.svc:15010")]
    pub xds_address: String,
    /// The cluster's id.
    #[arg(long, default_value = strait_sources::kube::DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// Cluster DNS suffix.
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,
    /// Envoy's readiness port (0: none).
    #[arg(long, default_value_t = keys::HEALTH_PORT)]
    pub status_port: u16,
    /// Envoy's Prometheus port (0: none).
    #[arg(long, default_value_t = keys::STATS_PORT)]
    pub stats_port: u16,
    /// Inbound ports to capture (`*`: all).
    #[arg(long, default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports not to capture.
    #[arg(long, default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound destinations to capture, CIDRs (`*`: all).
    #[arg(long, default_value = "*")]
    pub outbound_ip_ranges: String,
    /// Outbound destinations not to capture, CIDRs.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ip_ranges: String,
    /// Outbound ports always captured.
    #[arg(long, default_value = "")]
    pub include_outbound_ports: String,
    /// Outbound ports not to capture.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Extra node metadata, `KEY=VALUE` (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Incremental xDS.
    #[arg(long)]
    pub delta: bool,
    /// Where to write the bootstrap.
    #[arg(long, default_value = keys::BOOTSTRAP_PATH)]
    pub bootstrap: PathBuf,
    /// Where to copy this binary for Envoy's hooks (empty: do not).
    #[arg(long, default_value = keys::STRAIT_COPY_PATH)]
    pub copy_binary: PathBuf,
    /// The downward-API volume with the `labels` and `annotations` files.
    #[arg(long, default_value = keys::PODINFO_DIR)]
    pub podinfo: PathBuf,
    /// Capture IPv6 traffic too (`ip6tables-restore`). Off by default: strait's listeners are
    /// IPv4.
    #[arg(long)]
    pub capture_ipv6: bool,
    /// The `iptables-restore` command (for example `iptables-legacy-restore`).
    #[arg(long, default_value = "iptables-restore")]
    pub iptables_restore: String,
    /// The `ip6tables-restore` command.
    #[arg(long, default_value = "ip6tables-restore")]
    pub ip6tables_restore: String,
    /// Print the rules and the bootstrap; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl InitArgs {
    /// The arguments as the library's settings.
    pub fn config(&self) -> anyhow::Result<InitConfig> {
        let ports = |s: &str, star: bool, flag: &str| {
            iptables::parse_ports(s, star).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        let ranges = |s: &str, star: bool, flag: &str| {
            iptables::parse_ranges(s, star).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        let mut metadata = BTreeMap::new();
        for kv in &self.metadata {
            match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    metadata.insert(k.to_string(), v.to_string());
                }
                _ => bail!("--metadata {kv:?} is not KEY=VALUE"),
            }
        }
        Ok(InitConfig {
            revision: self.revision.clone(),
            tag: self.tag.clone(),
            xds_address: self.xds_address.clone(),
            cluster_id: self.cluster_id.clone(),
            domain: self.domain.clone(),
            status_port: self.status_port,
            stats_port: self.stats_port,
            metadata,
            delta: self.delta,
            capture: Capture {
                inbound_ports: ports(&self.inbound_ports, true, "--inbound-ports")?,
                exclude_inbound_ports: ports(
                    &self.exclude_inbound_ports,
                    false,
                    "--exclude-inbound-ports",
                )?
                .list()
                .to_vec(),
                outbound_ranges: ranges(&self.outbound_ip_ranges, true, "--outbound-ip-ranges")?,
                exclude_outbound_ranges: ranges(
                    &self.exclude_outbound_ip_ranges,
                    false,
                    "--exclude-outbound-ip-ranges",
                )?
                .list()
                .to_vec(),
                include_outbound_ports: ports(
                    &self.include_outbound_ports,
                    false,
                    "--include-outbound-ports",
                )?
                .list()
                .to_vec(),
                exclude_outbound_ports: ports(
                    &self.exclude_outbound_ports,
                    false,
                    "--exclude-outbound-ports",
                )?
                .list()
                .to_vec(),
                ..Capture::default()
            },
        })
    }

    /// What `strait init` would do for a pod whose environment `env` looks up, with the
    /// downward-API files under `--podinfo`.
    pub fn plan(&self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<InitPlan> {
        let cfg = self.config()?;
        let read = |name: &str| std::fs::read_to_string(self.podinfo.join(name)).ok();
        let (labels, annotations) = (read("labels"), read("annotations"));
        let pod = PodIdentity::from_env(env, labels.as_deref(), annotations.as_deref())?;
        Ok(plan(&cfg, &pod))
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, bytes).with_context(|| tmp.display().to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| tmp.display().to_string())?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

fn restore(cmd: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("run {cmd}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())
        .with_context(|| format!("write to {cmd}"))?;
    let status = child.wait().with_context(|| format!("wait for {cmd}"))?;
    if !status.success() {
        bail!("{cmd} failed ({status}); the rules were:\n{rules}");
    }
    Ok(())
}

/// Placeholders for `--dry-run` outside a pod.
fn dry_run_env(k: &str) -> Option<String> {
    std::env::var(k).ok().or_else(|| {
        let v = match k {
            "POD_NAME" => "pod",
            "POD_NAMESPACE" => "default",
            "INSTANCE_IP" => "10.0.0.1",
            _ => return None,
        };
        eprintln!("strait init: {k} is not set; --dry-run uses {v}");
        Some(v.to_string())
    })
}

/// Runs `strait init`.
pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    if args.dry_run {
        let p = args.plan(&dry_run_env)?;
        let bootstrap = serde_json::to_string_pretty(&p.bootstrap).context("bootstrap")?;
        println!("# iptables-restore input");
        print!("{}", p.rules_v4);
        println!("# ip6tables-restore input (loaded with --capture-ipv6)");
        print!("{}", p.rules_v6);
        println!("# Envoy bootstrap ({})", args.bootstrap.display());
        println!("{bootstrap}");
        return Ok(ExitCode::SUCCESS);
    }
    let env = |k: &str| std::env::var(k).ok();
    let p = args.plan(&env)?;
    let bootstrap = serde_json::to_vec_pretty(&p.bootstrap).context("bootstrap")?;
    write_atomic(&args.bootstrap, &bootstrap, 0o644)?;
    eprintln!(
        "strait init: bootstrap written to {}",
        args.bootstrap.display()
    );
    if !args.copy_binary.as_os_str().is_empty() {
        let me = std::env::current_exe().context("this binary's path")?;
        let bin = std::fs::read(&me).with_context(|| me.display().to_string())?;
        write_atomic(&args.copy_binary, &bin, 0o755)?;
        eprintln!(
            "strait init: {} copied to {}",
            me.display(),
            args.copy_binary.display()
        );
    }
    restore(&args.iptables_restore, &p.rules_v4)?;
    eprintln!("strait init: IPv4 traffic capture installed");
    let has_v6 = std::env::var("INSTANCE_IPS")
        .unwrap_or_default()
        .split(',')
        .any(|ip| ip.trim().parse::<std::net::Ipv6Addr>().is_ok());
    if args.capture_ipv6 {
        restore(&args.ip6tables_restore, &p.rules_v6)?;
        eprintln!("strait init: IPv6 traffic capture installed");
    } else if has_v6 {
        eprintln!(
            "strait init: the pod has an IPv6 address; its IPv6 traffic is not captured \
             (--capture-ipv6 to capture it)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    #[test]
    fn the_injected_arguments_parse() {
        let cli = Cli::try_parse_from([
            "strait",
            "--revision",
            "canary",
            "--tag",
            "stable",
            "--xds-address",
            "strait-tag-stable.istio-system.svc:15010",
            "--inbound-ports",
            "*",
            "--exclude-inbound-ports",
            "15021,15090,8443",
            "--exclude-outbound-ip-ranges",
            "10.96.0.10/32",
            "--metadata",
            "ISTIO_META_A=b",
            "--podinfo",
            "/nonexistent",
        ])
        .expect("parses");
        let cfg = cli.init.config().expect("config");
        assert_eq!(cfg.capture.exclude_inbound_ports, vec![15021, 15090, 8443]);
        assert_eq!(cfg.metadata["ISTIO_META_A"], "b");
        let env = |k: &str| {
            Some(
                match k {
                    "POD_NAME" => "p",
                    "POD_NAMESPACE" => "n",
                    "INSTANCE_IP" => "10.1.1.1",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let p = cli.init.plan(&env).expect("plan");
        assert_eq!(p.bootstrap["node"]["metadata"]["STRAIT_TAG"], "stable");
        assert!(p.rules_v4.contains("--dport 8443 -j RETURN"));
        let bad = Cli::try_parse_from(["strait", "--exclude-outbound-ip-ranges", "nope"])
            .expect("parses");
        assert!(bad.init.config().is_err());
    }
}
