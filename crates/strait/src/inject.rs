//! `strait inject`: adds the sidecar to manifests offline, like `istioctl kube-inject`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use strait_api::MeshConfig;
use strait_inject::inject::{Injector, InjectorConfig};
use strait_inject::offline;

use crate::webhook::{InjectorArgs, NativeSidecars};

/// Options of `strait inject`.
#[derive(Args, Debug)]
pub struct InjectArgs {
    /// The manifests (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: String,
    /// Where to write the result; standard output by default.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// The revision that injects (its Service is the xDS address).
    #[arg(long, default_value = "default")]
    revision: String,
    /// Inject through this tag (pointing at --revision): proxies connect to the tag's
    /// Service and follow the tag when it moves.
    #[arg(long)]
    tag: Option<String>,
    /// The mesh config: a file with the `mesh` ConfigMap (or just its `mesh` text).
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    /// The xDS address proxies connect to, instead of the revision's or tag's Service.
    #[arg(long)]
    xds_address: Option<String>,
    /// The namespace of objects that name none.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The control plane's namespace.
    #[arg(long, default_value = "istio-system")]
    system_namespace: String,
    /// The cluster's id.
    #[arg(long, default_value = strait_sources::kube::DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// Cluster DNS suffix.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// What is injected (offline, `--native-sidecars auto` means true).
    #[command(flatten)]
    injector: InjectorArgs,
}

/// Reads a mesh config file: a ConfigMap with a `mesh` key, or the mesh YAML itself.
pub fn read_mesh_config(path: &std::path::Path) -> anyhow::Result<MeshConfig> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let value: serde_json::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: YAML", path.display()))?;
    let mesh_text = if value["kind"] == "ConfigMap" {
        match value["data"]["mesh"].as_str() {
            Some(m) => m.to_string(),
            None => bail!("{}: the ConfigMap has no data.mesh", path.display()),
        }
    } else {
        text
    };
    strait_model::parse_mesh_config(&mesh_text)
        .map_err(|e| anyhow::anyhow!("{}: mesh config: {e}", path.display()))
}

/// Runs `strait inject`.
pub fn run(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let input = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("read standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| args.file.clone())?
    };
    let mesh = match &args.mesh_config {
        Some(p) => read_mesh_config(p)?,
        None => MeshConfig::default(),
    };
    let config = InjectorConfig {
        revision: args.revision.clone(),
        system_namespace: args.system_namespace.clone(),
        domain: args.domain.clone(),
        cluster_id: args.cluster_id.clone(),
        proxy_image: args.injector.proxy_image.clone(),
        init_image: args.injector.init_image.clone(),
        native_sidecars: args.injector.native_sidecars != NativeSidecars::False,
        xds_address: args.xds_address.clone(),
    };
    let out = offline::inject_yaml(
        &input,
        &Injector::new(&config, &mesh),
        args.tag.as_deref(),
        &args.namespace,
    )
    .with_context(|| format!("inject {}", args.file))?;
    for o in &out.outcomes {
        let what = if o.injected { "injected" } else { "skipped" };
        eprintln!("{what}: {} ({})", o.object, o.reason);
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &out.yaml).with_context(|| path.display().to_string())?
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.yaml.as_bytes())
                .context("write standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
