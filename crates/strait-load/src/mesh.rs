//! The generated mesh: services with HTTP ports, pods in two versions spread over three
//! nodes (three zones of one region), one EndpointSlice per service, and optionally a
//! DestinationRule (subsets v1/v2) and a VirtualService (90/10 split) per service.
//!
//! Each service lives in one file (`<namespace>--<name>.yaml`) so that a churn step rewrites
//! one small file, atomically. Every address is on the loopback range: the simulated proxies
//! never connect to endpoints, and the Envoys of `envoy-check` must not either, but should
//! one ever try, it stays on this machine.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The nodes pods are spread over: (name, region, zone).
pub const NODES: [(&str, &str, &str); 3] = [
    ("node-a", "us-east1", "us-east1-a"),
    ("node-b", "us-east1", "us-east1-b"),
    ("node-c", "us-east1", "us-east1-c"),
];

/// Ports services pick from (each service takes `ports_per_service` consecutive ones).
pub const PORT_BASE: u16 = 8080;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSpec {
    /// Number of services.
    pub services: usize,
    /// Namespaces the services (and proxies) are spread over.
    pub namespaces: usize,
    /// Pods (endpoints) per service at the start.
    pub pods_per_service: usize,
    /// HTTP ports per service.
    pub ports_per_service: usize,
    /// Also a DestinationRule and a VirtualService per service.
    pub with_routing: bool,
    /// Cluster DNS suffix.
    pub domain: String,
}

impl Default for MeshSpec {
    fn default() -> Self {
        Self {
            services: 10,
            namespaces: 3,
            pods_per_service: 10,
            ports_per_service: 2,
            with_routing: false,
            domain: "cluster.local".to_string(),
        }
    }
}

impl MeshSpec {
    /// How many distinct ports services use: at least 10 (so that listeners and route
    /// configurations are shared by many services, as in a real mesh), and enough for each
    /// service to have distinct ones.
    pub fn port_pool(&self) -> usize {
        self.ports_per_service.max(10)
    }

    /// Name of namespace `i`.
    pub fn namespace(&self, i: usize) -> String {
        format!("load-{:02}", i % self.namespaces.max(1))
    }
}

/// A host in a /16-sized block of the loopback range, skipping `.0` and `.255`.
fn loopback(block: u8, n: u32) -> Ipv4Addr {
    let host = (n / 254) * 256 + n % 254 + 1;
    Ipv4Addr::from(u32::from_be_bytes([127, block, 0, 0]) + host)
}

/// The address of generated pod number `n`.
pub fn pod_ip(n: u32) -> Ipv4Addr {
    loopback(16, n)
}

/// The cluster IP of service number `n`.
pub fn cluster_ip(n: u32) -> Ipv4Addr {
    loopback(96, n)
}

/// The address of simulated proxy number `n` (not a pod of the mesh).
pub fn proxy_ip(n: u32) -> Ipv4Addr {
    loopback(128, n)
}

/// The node address of stock Envoy number `n` (`envoy-check`).
pub fn envoy_ip(n: u32) -> Ipv4Addr {
    loopback(130, n)
}

/// Where stock Envoy number `n` binds its outbound listeners (`envoy-check`): one address
/// each, so that many Envoys on one machine do not fight over ports.
pub fn envoy_bind_ip(n: u32) -> Ipv4Addr {
    loopback(131, n)
}

/// One pod of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// `version` label: 1 or 2.
    pub version: u8,
    /// Index into [`NODES`].
    pub node: usize,
    /// The endpoint's `conditions.ready`.
    pub ready: bool,
}

/// One service and everything its file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// Service name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its number (cluster IP, ports).
    pub number: u32,
    /// HTTP ports.
    pub ports: Vec<u16>,
    /// Pods, in creation order.
    pub pods: Vec<PodState>,
    /// Pods created so far (for unique names).
    pub pods_created: u32,
    /// A label edited by config churn (`load-generation`).
    pub generation: u64,
    /// VirtualService weight of subset v1 (v2 gets the rest).
    pub v1_weight: u32,
}

impl ServiceState {
    /// `<name>.<namespace>.svc.<domain>`.
    pub fn hostname(&self, domain: &str) -> String {
        format!("{}.{}.svc.{domain}", self.name, self.namespace)
    }

    /// Envoy cluster (and EDS resource) names, one per port.
    pub fn cluster_names(&self, domain: &str) -> Vec<String> {
        let host = self.hostname(domain);
        self.ports
            .iter()
            .map(|p| format!("outbound|{p}||{host}"))
            .collect()
    }

    /// The subset cluster of `subset` on `port`.
    pub fn subset_cluster(&self, port: u16, subset: &str, domain: &str) -> String {
        format!("outbound|{port}|{subset}|{}", self.hostname(domain))
    }

    /// The file the service is written to.
    pub fn file_name(&self) -> String {
        format!("{}--{}.yaml", self.namespace, self.name)
    }

    /// The file's content.
    pub fn render(&self, spec: &MeshSpec) -> String {
        let mut out = String::with_capacity(512 + self.pods.len() * 600);
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("{{name: http-{p}, port: {p}, targetPort: {p}, protocol: TCP}}"))
            .collect();
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
             labels: {{app: {name}, load-generation: \"{generation}\"}}\nspec:\n  clusterIP: {ip}\n  \
             selector: {{app: {name}}}\n  ports: [{ports}]\n",
            name = self.name,
            ns = self.namespace,
            generation = self.generation,
            ip = cluster_ip(self.number),
            ports = ports.join(", "),
        );
        for pod in &self.pods {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  \
                 labels: {{app: {name}, version: v{version}}}\nspec: {{nodeName: {node}, containers: [{{name: app, image: app}}]}}\n\
                 status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
                pod = pod.name,
                ns = self.namespace,
                name = self.name,
                version = pod.version,
                node = NODES[pod.node % NODES.len()].0,
                ip = pod.ip,
            );
        }
        let slice_ports: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("{{name: http-{p}, port: {p}, protocol: TCP}}"))
            .collect();
        let _ = write!(
            out,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-slice\n  \
             namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
             ports: [{ports}]\nendpoints:",
            name = self.name,
            ns = self.namespace,
            ports = slice_ports.join(", "),
        );
        if self.pods.is_empty() {
            out.push_str(" []\n");
        } else {
            out.push('\n');
        }
        for pod in &self.pods {
            let (node, _, zone) = NODES[pod.node % NODES.len()];
            let _ = write!(
                out,
                "- addresses: [{ip}]\n  conditions: {{ready: {ready}}}\n  nodeName: {node}\n  zone: {zone}\n  \
                 targetRef: {{kind: Pod, name: {pod}, namespace: {ns}}}\n",
                ip = pod.ip,
                ready = pod.ready,
                pod = pod.name,
                ns = self.namespace,
            );
        }
        if spec.with_routing {
            let host = self.hostname(&spec.domain);
            let _ = write!(
                out,
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  \
                 namespace: {ns}\nspec:\n  host: {host}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n  \
                 - name: v2\n    labels: {{version: v2}}\n\
                 ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  \
                 namespace: {ns}\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    \
                 - destination: {{host: {host}, subset: v1}}\n      weight: {w1}\n    \
                 - destination: {{host: {host}, subset: v2}}\n      weight: {w2}\n",
                name = self.name,
                ns = self.namespace,
                w1 = self.v1_weight,
                w2 = 100 - self.v1_weight.min(100),
            );
        }
        out
    }
}

/// A new ready pod of `svc` at `ip` (not added to it): v1 for 80% of pods, v2 for the rest,
/// spread over the nodes.
fn make_pod(svc: &mut ServiceState, ip: Ipv4Addr) -> PodState {
    let i = svc.pods_created;
    svc.pods_created += 1;
    PodState {
        name: format!("{}-{i}", svc.name),
        ip,
        version: if i % 5 == 4 { 2 } else { 1 },
        node: (i as usize + svc.number as usize) % NODES.len(),
        ready: true,
    }
}

/// The whole generated mesh, as the harness believes the directory holds it.
#[derive(Debug, Clone)]
pub struct MeshState {
    /// What was asked for.
    pub spec: MeshSpec,
    /// Services, by number.
    pub services: Vec<ServiceState>,
    /// Pods created so far (for unique IPs).
    pub pods_created: u32,
}

impl MeshState {
    /// The initial mesh of `spec`. Deterministic: the same spec gives the same mesh, so a
    /// harness attached to a strait serving a directory written by `generate` knows it.
    pub fn generate(spec: &MeshSpec) -> Self {
        let mut mesh = MeshState {
            spec: spec.clone(),
            services: Vec::with_capacity(spec.services),
            pods_created: 0,
        };
        for _ in 0..spec.services {
            mesh.add_service();
        }
        mesh
    }

    /// Adds a service with the spec's number of pods; returns its index.
    pub fn add_service(&mut self) -> usize {
        let number = self.services.len() as u32;
        let pool = self.spec.port_pool();
        let ports = (0..self.spec.ports_per_service.max(1))
            .map(|j| PORT_BASE + ((number as usize + j) % pool) as u16)
            .collect();
        let mut svc = ServiceState {
            name: format!("svc-{number:05}"),
            namespace: self.spec.namespace(number as usize),
            number,
            ports,
            pods: Vec::new(),
            pods_created: 0,
            generation: 0,
            v1_weight: 90,
        };
        for _ in 0..self.spec.pods_per_service {
            let ip = self.next_pod_ip();
            let pod = make_pod(&mut svc, ip);
            svc.pods.push(pod);
        }
        self.services.push(svc);
        self.services.len() - 1
    }

    fn next_pod_ip(&mut self) -> Ipv4Addr {
        let ip = pod_ip(self.pods_created);
        self.pods_created += 1;
        ip
    }

    /// Adds a new ready pod to service `index` and returns it.
    pub fn add_pod(&mut self, index: usize) -> PodState {
        let ip = self.next_pod_ip();
        let svc = &mut self.services[index];
        let pod = make_pod(svc, ip);
        svc.pods.push(pod.clone());
        pod
    }

    /// The file with the nodes and namespaces.
    pub fn render_cluster_file(&self) -> String {
        let mut out = String::new();
        for (name, region, zone) in NODES {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
                 topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: {zone}\n"
            );
        }
        for i in 0..self.spec.namespaces.max(1) {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels: {{istio-injection: enabled}}\n",
                self.spec.namespace(i)
            );
        }
        out
    }

    /// Writes every file into `dir`.
    pub fn write_all(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join("cluster.yaml"), &self.render_cluster_file())?;
        for i in 0..self.services.len() {
            self.write_service(dir, i)?;
        }
        Ok(())
    }

    /// Writes one service's file into `dir` (atomically); returns its path.
    pub fn write_service(&self, dir: &Path, index: usize) -> Result<PathBuf> {
        let svc = &self.services[index];
        let path = dir.join(svc.file_name());
        write_atomic(&path, &svc.render(&self.spec))?;
        Ok(path)
    }
}

/// Writes `contents` to a hidden temporary file next to `path` and renames it over `path`,
/// so that a reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_manifest_is_accepted() {
        for with_routing in [false, true] {
            let spec = MeshSpec {
                services: 12,
                namespaces: 4,
                pods_per_service: 5,
                ports_per_service: 3,
                with_routing,
                ..Default::default()
            };
            let mut mesh = MeshState::generate(&spec);
            // An empty service and a not-ready endpoint must render valid files too.
            mesh.services[0].pods.clear();
            mesh.services[1].pods[0].ready = false;
            let files = std::iter::once(("cluster.yaml".to_string(), mesh.render_cluster_file()))
                .chain(
                    mesh.services
                        .iter()
                        .map(|s| (s.file_name(), s.render(&spec))),
                );
            let mut objects = 0;
            for (name, text) in files {
                let content =
                    strait_sources::manifest::parse_manifests(Path::new(&name), &text, "default");
                assert!(
                    content.problems.is_empty(),
                    "{name}: {:?}\n{text}",
                    content.problems
                );
                assert_eq!(content.ignored, 0, "{name}");
                assert!(!content.incomplete);
                objects += content.objects.len();
            }
            let per_service = 2 + 5 + if with_routing { 2 } else { 0 };
            // 3 nodes, 4 namespaces, service 0 lost its 5 pods.
            assert_eq!(objects, 3 + 4 + 12 * per_service - 5);
        }
    }

    #[test]
    fn generation_is_deterministic_and_addresses_unique() {
        let spec = MeshSpec {
            services: 300,
            pods_per_service: 4,
            ..Default::default()
        };
        let a = MeshState::generate(&spec);
        let b = MeshState::generate(&spec);
        assert_eq!(a.services, b.services);
        let mut ips: Vec<Ipv4Addr> = a
            .services
            .iter()
            .flat_map(|s| s.pods.iter().map(|p| p.ip))
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 1200);
        assert!(ips.iter().all(|ip| ip.is_loopback() && ip.octets()[3] != 0));
        for s in &a.services {
            let mut ports = s.ports.clone();
            ports.dedup();
            assert_eq!(ports.len(), 2, "distinct ports");
        }
        assert_eq!(
            a.services[3].cluster_names("cluster.local"),
            [
                "outbound|8083||svc-00003.load-00.svc.cluster.local",
                "outbound|8084||svc-00003.load-00.svc.cluster.local"
            ]
        );
        let versions = a.services[0].pods.iter().filter(|p| p.version == 2).count();
        assert_eq!(versions, 0, "4 pods: all v1");
    }

    #[test]
    fn loopback_blocks() {
        assert_eq!(pod_ip(0), Ipv4Addr::new(127, 16, 0, 1));
        assert_eq!(pod_ip(253), Ipv4Addr::new(127, 16, 0, 254));
        assert_eq!(pod_ip(254), Ipv4Addr::new(127, 16, 1, 1));
        assert_eq!(proxy_ip(0), Ipv4Addr::new(127, 128, 0, 1));
        assert_eq!(cluster_ip(1), Ipv4Addr::new(127, 96, 0, 2));
    }

    #[test]
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.yaml");
        write_atomic(&p, "one").expect("write");
        write_atomic(&p, "two").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
