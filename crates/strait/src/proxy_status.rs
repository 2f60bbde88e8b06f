//! `strait proxy-status`: every connected proxy and its per-type sync state.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kube::Api;
use kube::api::ListParams;
use strait_api::k8s_openapi::api::core::v1::Pod;
use strait_xds::{ProxySyncz, Syncz};

use crate::tag::ClusterArgs;

/// The status API's port on control-plane pods.
pub const DEBUG_PORT: u16 = 15014;

/// How long one control-plane pod may take to answer through the API server.
const POD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Options of `strait proxy-status`.
#[derive(Args)]
pub struct ProxyStatusArgs {
    /// The control plane's status API (repeatable, to gather several control planes;
    /// default `http://127.0.0.1:15014` unless `--all-revisions` is given).
    #[arg(long = "debug-addr")]
    debug_addrs: Vec<String>,
    /// Ask every control-plane pod (`app=strait` in the system namespace, all revisions and
    /// replicas) through the Kubernetes API server's pod proxy.
    #[arg(long)]
    all_revisions: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The API server path that proxies to a pod's `/debug/syncz`.
pub fn pod_proxy_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:{DEBUG_PORT}/proxy/debug/syncz")
}

/// Every running control-plane pod's delivery state, through the API server; a pod that
/// does not answer is reported, not fatal.
pub async fn gather_from_cluster(
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<Vec<Result<Syncz, String>>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels("app=strait,strait.io/rev"))
        .await
        .with_context(|| format!("list the control-plane pods in {namespace}"))?;
    let mut out = Vec::new();
    for pod in list.items {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Running");
        if !running {
            continue;
        }
        let path = pod_proxy_path(namespace, &name);
        let request = http::Request::get(&path)
            .body(Vec::new())
            .context("build the request")?;
        // The client retries 503s (what the API server answers for a pod it cannot reach):
        // bound the wait per pod.
        let answer = match tokio::time::timeout(POD_TIMEOUT, client.request_text(request)).await {
            Ok(Ok(text)) => serde_json::from_str::<Syncz>(&text)
                .map_err(|e| format!("pod {namespace}/{name}: not a syncz document: {e}")),
            Ok(Err(e)) => Err(format!("pod {namespace}/{name}: {e}")),
            Err(_) => Err(format!(
                "pod {namespace}/{name}: no answer within {POD_TIMEOUT:?}"
            )),
        };
        out.push(answer);
    }
    Ok(out)
}

fn url(base: &str) -> String {
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    format!("{}/debug/syncz", base.trim_end_matches('/'))
}

fn state(p: &ProxySyncz, t: &str) -> String {
    p.types
        .get(t)
        .map(|s| s.state.replace('_', " "))
        .unwrap_or_else(|| "NOT SENT".to_string())
}

/// Renders the table `istioctl proxy-status` users know.
pub fn table(planes: &[Syncz]) -> String {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "CDS".to_string(),
        "LDS".to_string(),
        "EDS".to_string(),
        "RDS".to_string(),
        "CONTROL PLANE".to_string(),
        "REVISION".to_string(),
        "TAG".to_string(),
        "VERSION".to_string(),
    ]];
    for plane in planes {
        for p in &plane.proxies {
            rows.push(vec![
                p.proxy.clone(),
                state(p, "CDS"),
                state(p, "LDS"),
                state(p, "EDS"),
                state(p, "RDS"),
                plane.control_plane.clone(),
                plane.revision.clone(),
                p.tag.clone().unwrap_or_else(|| "-".to_string()),
                p.envoy_version
                    .clone()
                    .unwrap_or_else(|| "unknown".to_string()),
            ]);
        }
    }
    crate::table::render(&rows)
}

/// Fetches and prints every control plane's delivery state.
pub fn run(args: ProxyStatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let debug_addrs = if args.debug_addrs.is_empty() && !args.all_revisions {
        vec![format!("http://127.0.0.1:{DEBUG_PORT}")]
    } else {
        args.debug_addrs.clone()
    };
    let planes = runtime.block_on(async {
        let mut planes = Vec::new();
        let mut failed = Vec::new();
        if args.all_revisions {
            let client = args.cluster.client().await?;
            for answer in gather_from_cluster(&client, &args.cluster.system_namespace).await? {
                match answer {
                    Ok(z) => planes.push(z),
                    Err(e) => failed.push(e),
                }
            }
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .context("HTTP client")?;
        for base in &debug_addrs {
            let u = url(base);
            let fetched = async {
                client
                    .get(&u)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .with_context(|| format!("fetch {u}"))?
                    .json::<Syncz>()
                    .await
                    .with_context(|| format!("decode {u}"))
            };
            match fetched.await {
                Ok(z) => planes.push(z),
                // During a migration one revision may be gone: show the others.
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        if planes.is_empty() && !failed.is_empty() {
            anyhow::bail!("no control plane answered: {}", failed.join("; "));
        }
        for f in &failed {
            eprintln!("warning: {f}");
        }
        anyhow::Ok(planes)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&planes)?);
    } else {
        print!("{}", table(&planes));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use strait_xds::TypeSyncz;

    #[test]
    fn renders_a_table() {
        let ts = |s: &str| TypeSyncz {
            state: s.to_string(),
            sent_version: None,
            sent_nonce: None,
            acked_version: None,
            nack: None,
            resources: 0,
            responses: 0,
        };
        let mut types = BTreeMap::new();
        types.insert("CDS".to_string(), ts("SYNCED"));
        types.insert("LDS".to_string(), ts("NACKED"));
        types.insert("EDS".to_string(), ts("STALE"));
        types.insert("RDS".to_string(), ts("NOT_SENT"));
        let z = Syncz {
            control_plane: "strait-default@host".into(),
            revision: "default".into(),
            mesh_version: 3,
            proxies: vec![ProxySyncz {
                proxy: "sidecar~1.2.3.4~a.b~b.svc.cluster.local".into(),
                envoy_version: Some("1.40.0".into()),
                delta: false,
                peer: None,
                tag: Some("prod".into()),
                connected_at: 0,
                types,
            }],
        };
        let t = table(&[z]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].contains("SYNCED"));
        assert!(lines[1].contains("NACKED"));
        assert!(lines[1].contains("NOT SENT"));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        // "NOT SENT" is two words.
        assert_eq!(cols[6..9], ["strait-default@host", "default", "prod"]);
        assert!(lines[1].ends_with("1.40.0"));
        assert_eq!(url("127.0.0.1:15014"), "http://127.0.0.1:15014/debug/syncz");
    }
}
