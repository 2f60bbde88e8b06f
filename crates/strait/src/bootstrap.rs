//! `strait bootstrap`: a complete Envoy bootstrap pointing at strait.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use strait_translate::bootstrap::{BootstrapOptions, bootstrap};

/// Options of `strait bootstrap`.
#[derive(Args)]
pub struct BootstrapArgs {
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: String,
    /// The node id; by default built from --kind, --ip, --pod and --namespace the way Istio
    /// spells it (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
    #[arg(long)]
    node_id: Option<String>,
    /// Proxy kind: sidecar or router (gateway).
    #[arg(long, default_value = "sidecar")]
    kind: String,
    /// The proxy's IP (for the default node id).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// The proxy's pod name (for the default node id).
    #[arg(long, default_value = "envoy")]
    pod: String,
    /// The proxy's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// A label of the proxy's workload, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Bind outbound listeners on this IP instead of relying on traffic capture.
    #[arg(long)]
    outbound_bind: Option<IpAddr>,
    /// Without capture: where the application listens (inbound traffic goes there).
    #[arg(long)]
    app_address: Option<IpAddr>,
    /// Envoy's admin port.
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Envoy's admin address.
    #[arg(long, default_value = "127.0.0.1")]
    admin_address: IpAddr,
    /// Use incremental (Delta) xDS.
    #[arg(long)]
    delta: bool,
    /// The proxy's locality, `region/zone/subzone`.
    #[arg(long)]
    locality: Option<String>,
    /// Extra node metadata, `KEY=VALUE` (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Print JSON instead of YAML.
    #[arg(long)]
    json: bool,
}

fn key_values(
    items: &[String],
    what: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{what} {kv:?} is not KEY=VALUE"),
        })
        .collect()
}

/// Prints the bootstrap.
pub fn run(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    if args.kind != "sidecar" && args.kind != "router" {
        bail!("--kind must be sidecar or router, not {:?}", args.kind);
    }
    let node_id = args.node_id.clone().unwrap_or_else(|| {
        format!(
            "{}~{}~{}.{}~{}.svc.cluster.local",
            args.kind, args.ip, args.pod, args.namespace, args.namespace
        )
    });
    let opts = BootstrapOptions {
        xds_address: args.xds_address,
        node_id,
        node_cluster: format!("{}.{}", args.pod, args.namespace),
        namespace: Some(args.namespace),
        labels: key_values(&args.labels, "label")?,
        outbound_bind: args.outbound_bind,
        app_address: args.app_address,
        admin_address: args.admin_address,
        admin_port: args.admin_port,
        delta: args.delta,
        locality: args.locality.as_deref().map(strait_model::Locality::parse),
        metadata: key_values(&args.metadata, "metadata")?,
        ..Default::default()
    };
    let doc = bootstrap(&opts);
    let text = if args.json {
        serde_json::to_string_pretty(&doc).context("encode bootstrap")?
    } else {
        serde_yaml_ng::to_string(&doc).context("encode bootstrap")?
    };
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}
