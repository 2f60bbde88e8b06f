//! `strait proxy-status`: every connected proxy and its per-type sync state.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use strait_xds::{ProxySyncz, Syncz};

/// Options of `strait proxy-status`.
#[derive(Args)]
pub struct ProxyStatusArgs {
    /// The control plane's status API (repeatable, to gather several control planes).
    #[arg(long = "debug-addr", default_value = "http://127.0.0.1:15014")]
    debug_addrs: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    let mut rows = vec![[
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
            rows.push([
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
    let mut widths = [0usize; 9];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Fetches and prints every control plane's delivery state.
pub fn run(args: ProxyStatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let planes = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .context("HTTP client")?;
        let mut planes = Vec::new();
        let mut failed = Vec::new();
        for base in &args.debug_addrs {
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
