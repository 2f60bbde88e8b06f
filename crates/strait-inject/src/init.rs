//! What `strait init` does in the injected init container, as pure functions: the pod's
//! identity from the downward API (environment and files), the Envoy bootstrap built from
//! it, and the capture rules.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;
use strait_translate::bootstrap::{self, BootstrapOptions};

use crate::iptables::{self, Capture, Family};
use crate::{Error, Result, keys};

/// The init container's settings (its arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    /// The revision that injected the pod (node metadata `STRAIT_REVISION`).
    pub revision: String,
    /// The tag it was injected through (node metadata `STRAIT_TAG`).
    pub tag: Option<String>,
    /// The control plane's xDS address.
    pub xds_address: String,
    /// The cluster id (node metadata `CLUSTER_ID`).
    pub cluster_id: String,
    /// Cluster DNS suffix.
    pub domain: String,
    /// Envoy's readiness port (0: none).
    pub status_port: u16,
    /// Envoy's Prometheus port (0: none).
    pub stats_port: u16,
    /// Extra node metadata (the mesh's `proxyMetadata`).
    pub metadata: BTreeMap<String, String>,
    /// Incremental xDS.
    pub delta: bool,
    /// What to capture.
    pub capture: Capture,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            revision: "default".into(),
            tag: None,
            xds_address: "strait-default.istio-system.svc:15010".into(),
            cluster_id: "Kubernetes".into(),
            domain: "cluster.local".into(),
            status_port: keys::HEALTH_PORT,
            stats_port: keys::STATS_PORT,
            metadata: BTreeMap::new(),
            delta: false,
            capture: Capture::default(),
        }
    }
}

/// Who the pod is, from the downward API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// `POD_NAME`.
    pub name: String,
    /// `POD_NAMESPACE`.
    pub namespace: String,
    /// `INSTANCE_IP`.
    pub ip: IpAddr,
    /// `INSTANCE_IPS` (every address of a dual-stack pod), else the one IP.
    pub ips: Vec<IpAddr>,
    /// `SERVICE_ACCOUNT`.
    pub service_account: String,
    /// The pod's labels (downward-API file `labels`).
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations (downward-API file `annotations`).
    pub annotations: BTreeMap<String, String>,
}

fn init_err(s: impl Into<String>) -> Error {
    Error::Init(s.into())
}

/// Undoes Go's `%q` quoting, which the kubelet uses for downward-API map files.
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Option<u32> {
        let digits: String = chars.by_ref().take(n).collect();
        (digits.len() == n)
            .then(|| u32::from_str_radix(&digits, 16).ok())
            .flatten()
    };
    let mut bytes: Vec<u8> = Vec::new();
    let flush = |bytes: &mut Vec<u8>, out: &mut String| {
        if !bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        if e == 'x' {
            bytes.push(u8::try_from(hex(&mut chars, 2)?).ok()?);
            continue;
        }
        flush(&mut bytes, &mut out);
        match e {
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            'u' => out.push(char::from_u32(hex(&mut chars, 4)?)?),
            'U' => out.push(char::from_u32(hex(&mut chars, 8)?)?),
            _ => return None,
        }
    }
    flush(&mut bytes, &mut out);
    Some(out)
}

/// Parses a downward-API map file (`key="value"` per line, as the kubelet writes labels and
/// annotations).
pub fn parse_downward_map(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| init_err(format!("downward API line {}: no '='", i + 1)))?;
        let v = unquote(v).ok_or_else(|| {
            init_err(format!(
                "downward API line {}: value of {k} is not a quoted string",
                i + 1
            ))
        })?;
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

impl PodIdentity {
    /// Reads the identity from the environment the injected init container has (`env` looks
    /// a variable up) and the contents of the downward-API `labels` and `annotations` files.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        labels: Option<&str>,
        annotations: Option<&str>,
    ) -> Result<PodIdentity> {
        let var = |k: &str| {
            env(k)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| init_err(format!("environment variable {k} is not set")))
        };
        let parse_ip = |s: &str, k: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| init_err(format!("{k}={s:?} is not an IP address")))
        };
        let ip = parse_ip(&var("INSTANCE_IP")?, "INSTANCE_IP")?;
        let mut ips = Vec::new();
        if let Some(list) = env("INSTANCE_IPS") {
            for s in list.split(',').filter(|s| !s.trim().is_empty()) {
                ips.push(parse_ip(s, "INSTANCE_IPS")?);
            }
        }
        if !ips.contains(&ip) {
            ips.insert(0, ip);
        }
        Ok(PodIdentity {
            name: var("POD_NAME")?,
            namespace: var("POD_NAMESPACE")?,
            ip,
            ips,
            service_account: env("SERVICE_ACCOUNT").unwrap_or_else(|| "default".into()),
            labels: labels
                .map(parse_downward_map)
                .transpose()?
                .unwrap_or_default(),
            annotations: annotations
                .map(parse_downward_map)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// The proxy's service cluster: `<canonical name>.<namespace>`.
    fn service_cluster(&self) -> String {
        let name = [keys::CANONICAL_NAME, "app.kubernetes.io/name", "app"]
            .iter()
            .find_map(|k| self.labels.get(*k))
            .cloned()
            .unwrap_or_else(|| self.name.clone());
        format!("{name}.{}", self.namespace)
    }
}

/// The bootstrap options of an injected sidecar.
pub fn bootstrap_options(cfg: &InitConfig, pod: &PodIdentity) -> BootstrapOptions {
    let mut metadata = BTreeMap::new();
    // Istio's convention: ISTIO_META_FOO in proxyMetadata is node metadata FOO.
    for (k, v) in &cfg.metadata {
        let key = k.strip_prefix("ISTIO_META_").unwrap_or(k);
        metadata.insert(key.to_string(), v.clone());
    }
    let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
    metadata.insert("INSTANCE_IPS".into(), ips.join(","));
    metadata.insert("POD_NAME".into(), pod.name.clone());
    metadata.insert("SERVICE_ACCOUNT".into(), pod.service_account.clone());
    metadata.insert("CLUSTER_ID".into(), cfg.cluster_id.clone());
    metadata.insert("INTERCEPTION_MODE".into(), "REDIRECT".into());
    metadata.insert("STRAIT_REVISION".into(), cfg.revision.clone());
    match &cfg.tag {
        Some(t) => {
            metadata.insert("STRAIT_TAG".into(), t.clone());
        }
        None => {
            metadata.remove("STRAIT_TAG");
        }
    }
    let ns = &pod.namespace;
    BootstrapOptions {
        xds_address: cfg.xds_address.clone(),
        node_id: format!(
            "sidecar~{}~{}.{ns}~{ns}.svc.{}",
            pod.ip, pod.name, cfg.domain
        ),
        node_cluster: pod.service_cluster(),
        namespace: Some(ns.clone()),
        labels: pod.labels.clone(),
        admin_address: IpAddr::from([127, 0, 0, 1]),
        admin_port: keys::ADMIN_PORT,
        delta: cfg.delta,
        metadata,
        health_port: (cfg.status_port != 0).then_some(cfg.status_port),
        stats_port: (cfg.stats_port != 0).then_some(cfg.stats_port),
        ..Default::default()
    }
}

/// Everything `strait init` produces.
#[derive(Debug, Clone)]
pub struct InitPlan {
    /// The Envoy bootstrap (JSON).
    pub bootstrap: Value,
    /// `iptables-restore` input.
    pub rules_v4: String,
    /// `ip6tables-restore` input.
    pub rules_v6: String,
}

/// The bootstrap and the rules for `pod`.
pub fn plan(cfg: &InitConfig, pod: &PodIdentity) -> InitPlan {
    InitPlan {
        bootstrap: bootstrap::bootstrap(&bootstrap_options(cfg, pod)),
        rules_v4: iptables::rules(&cfg.capture, Family::V4),
        rules_v6: iptables::rules(&cfg.capture, Family::V6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn downward_files_as_the_kubelet_writes_them() {
        let text = "app=\"web\"\nnote=\"a \\\"quoted\\\" \\\\ value\\n\\tnext\"\n\
                    utf8=\"caf\\u00e9 \\xc3\\xa9\"\nempty=\"\"\n";
        let m = parse_downward_map(text).expect("parses");
        assert_eq!(m["app"], "web");
        assert_eq!(m["note"], "a \"quoted\" \\ value\n\tnext");
        assert_eq!(m["utf8"], "café é");
        assert_eq!(m["empty"], "");
        assert!(parse_downward_map("noequals").is_err());
        assert!(parse_downward_map("k=unquoted").is_err());
        assert!(parse_downward_map("k=\"bad \\q escape\"").is_err());
    }

    #[test]
    fn identity_and_bootstrap() {
        let env = mk_env(&[
            ("POD_NAME", "web-7c9f-x2"),
            ("POD_NAMESPACE", "shop"),
            ("INSTANCE_IP", "10.1.2.3"),
            ("INSTANCE_IPS", "10.1.2.3,fd00::3"),
            ("SERVICE_ACCOUNT", "web"),
        ]);
        let pod = PodIdentity::from_env(
            &env,
            Some("app=\"web\"\nservice.istio.io/canonical-name=\"web\"\n"),
            None,
        )
        .expect("identity");
        assert_eq!(pod.ips.len(), 2);
        let cfg = InitConfig {
            revision: "canary".into(),
            tag: Some("stable".into()),
            xds_address: "strait-tag-stable.istio-system.svc:15010".into(),
            metadata: [("ISTIO_META_DNS_CAPTURE".to_string(), "true".to_string())].into(),
            ..InitConfig::default()
        };
        let b = plan(&cfg, &pod).bootstrap;
        assert_eq!(
            b["node"]["id"],
            "sidecar~10.1.2.3~web-7c9f-x2.shop~shop.svc.cluster.local"
        );
        assert_eq!(b["node"]["cluster"], "web.shop");
        let m = &b["node"]["metadata"];
        assert_eq!(m["NAMESPACE"], "shop");
        assert_eq!(m["LABELS"]["app"], "web");
        assert_eq!(m["INSTANCE_IPS"], "10.1.2.3,fd00::3");
        assert_eq!(m["SERVICE_ACCOUNT"], "web");
        assert_eq!(m["CLUSTER_ID"], "Kubernetes");
        assert_eq!(m["STRAIT_REVISION"], "canary");
        assert_eq!(m["STRAIT_TAG"], "stable");
        assert_eq!(m["DNS_CAPTURE"], "true");
        assert_eq!(m["INTERCEPTION_MODE"], "REDIRECT");
        assert_eq!(
            b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
                [0]["endpoint"]["address"]["socket_address"]["address"],
            "strait-tag-stable.istio-system.svc"
        );
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(
            b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
            15021
        );
        // Without a tag there is no STRAIT_TAG, even if proxyMetadata names one.
        let direct = InitConfig {
            metadata: [("STRAIT_TAG".to_string(), "x".to_string())].into(),
            ..InitConfig::default()
        };
        let b = plan(&direct, &pod).bootstrap;
        assert!(b["node"]["metadata"]["STRAIT_TAG"].is_null());
    }

    #[test]
    fn missing_identity_is_reported() {
        let env = mk_env(&[("POD_NAME", "p"), ("POD_NAMESPACE", "n")]);
        let e = PodIdentity::from_env(&env, None, None).expect_err("no IP");
        assert!(e.to_string().contains("INSTANCE_IP"), "{e}");
        let env = mk_env(&[
            ("POD_NAME", "p"),
            ("POD_NAMESPACE", "n"),
            ("INSTANCE_IP", "x"),
        ]);
        let e = PodIdentity::from_env(&env, None, None).expect_err("bad IP");
        assert!(e.to_string().contains("not an IP"), "{e}");
    }
}
