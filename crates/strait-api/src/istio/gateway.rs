//! Gateway: the listeners of a standalone Envoy at the edge of the mesh (an ingress or egress
//! gateway): ports, protocols, the hosts each port serves and their TLS settings. Routing for
//! those hosts comes from VirtualServices that name the Gateway.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::Spec;
use super::common::{
    Port, Protocol, UNIX_PREFIX, check_namespaced_host, check_port, is_default, is_dns_label,
    is_ip, validate_unix_path,
};
use crate::validate::{Issues, is_label_key, is_label_value};

/// The content of a Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Labels of the gateway proxies (pods) that take this configuration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One listener of a gateway: a port and the hosts it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    /// The port, protocol and name.
    pub port: Port,
    /// Address to listen on: an IP, or `unix://` and a socket path (with port number 0).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// Hosts served, as `[namespace/]host`: the namespace part limits which namespaces'
    /// VirtualServices may bind (`*` all, `.` the Gateway's own).
    pub hosts: Vec<String>,
    /// TLS settings; required for HTTPS and TLS ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Where to forward traffic on this port (`127.0.0.1:PORT` or `unix://`); unused by
    /// gateways today.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    /// A name for the server, used in stats.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Server {
    /// The port's protocol.
    pub fn protocol(&self) -> Protocol {
        self.port.protocol()
    }

    /// True when plain-HTTP requests are answered with a redirect to HTTPS.
    pub fn is_https_redirect(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.https_redirect)
    }

    /// The hosts as `(namespace, host)`; the namespace is `*` when the entry names none.
    pub fn namespaced_hosts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.hosts
            .iter()
            .map(|h| h.split_once('/').unwrap_or(("*", h.as_str())))
    }
}

/// TLS settings of a server (also used by Sidecar ingress listeners).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsSettings {
    /// Answer plain-HTTP requests with a 301 redirect to HTTPS.
    #[serde(default, skip_serializing_if = "is_default")]
    pub https_redirect: bool,
    /// How TLS is handled.
    #[serde(default, skip_serializing_if = "is_default")]
    pub mode: ServerTlsMode,
    /// Path of the server certificate file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    /// Path of the server private key file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// Path of the CA bundle to verify client certificates with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    /// Path of a certificate revocation list.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
    /// A Secret holding the certificate, key (and client CA), instead of files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// Up to two Secrets (say an RSA and an ECDSA certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// A Secret holding only the client CA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_cert_credential_name: String,
    /// Up to two certificate/key file pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// Identities accepted in client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Accepted SPKI hashes (base64 SHA-256) of client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Accepted hashes (hex SHA-256) of client certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version accepted.
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_protocol_version: TlsProtocol,
    /// Highest TLS version accepted.
    #[serde(default, skip_serializing_if = "is_default")]
    pub max_protocol_version: TlsProtocol,
    /// Cipher suites offered, in OpenSSL/BoringSSL names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
    /// Skip verifying client certificates (MUTUAL modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

impl ServerTlsSettings {
    /// True for the modes that forward TLS untouched (PASSTHROUGH, AUTO_PASSTHROUGH).
    pub fn is_passthrough(&self) -> bool {
        matches!(
            self.mode,
            ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
        )
    }
}

/// A certificate and key given as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    /// Path of the certificate file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    /// Path of the private key file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// Path of the client CA bundle.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
}

/// How a server handles TLS.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward TLS as is, routed by SNI.
    #[default]
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Forward TLS as is to the service named in the SNI (east-west gateways).
    AutoPassthrough,
    /// Terminate with the mesh's own certificates.
    IstioMutual,
    /// Terminate TLS, verifying a client certificate when one is sent.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    Default,
    schemars::JsonSchema,
)]
pub enum TlsProtocol {
    /// Envoy's default.
    #[default]
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

// ---------------------------------------------------------------------------------------------
// Validation

impl Spec for GatewaySpec {
    fn validate(&self, meta: &ObjectMeta, issues: &mut Issues) {
        // Gateway names end up in listener and route names, which allow no dots.
        if let Some(name) = meta.name.as_deref()
            && !name.is_empty()
            && !is_dns_label(name)
        {
            issues.error(
                "metadata.name",
                format!("{name:?} is not a valid Gateway name (DNS label, no dots)"),
            );
        }
        if self.servers.is_empty() {
            issues.error("spec.servers", "at least one server is required");
        }
        let mut port_names = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            check_server(issues, &at, s);
            if !port_names.insert(s.port.name.as_str()) && !s.port.name.is_empty() {
                issues.error(
                    format!("{at}.port.name"),
                    format!("port name {:?} is used by an earlier server", s.port.name),
                );
            }
            if s.is_https_redirect() && !s.protocol().is_http() {
                issues.warn(
                    format!("{at}.tls.httpsRedirect"),
                    "only has an effect on HTTP servers",
                );
            }
        }
        for (k, v) in &self.selector {
            let at = format!("spec.selector[{k}]");
            if !is_label_key(k) {
                issues.warn(
                    &at,
                    format!("{k:?} is not a valid label key, so no pod can match"),
                );
            }
            if !is_label_value(v) {
                issues.warn(
                    &at,
                    format!("{v:?} is not a valid label value, so no pod can match"),
                );
            }
        }
    }
}

fn check_server(issues: &mut Issues, at: &str, s: &Server) {
    if s.hosts.is_empty() {
        issues.error(format!("{at}.hosts"), "at least one host is required");
    }
    for (k, h) in s.hosts.iter().enumerate() {
        check_namespaced_host(issues, &format!("{at}.hosts[{k}]"), h, true);
    }

    let before = issues.errors().count();
    let protocol = s.port.protocol();
    if protocol == Protocol::Unsupported {
        issues.error(
            format!("{at}.port.protocol"),
            format!(
                "unsupported protocol {:?} (use HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS)",
                s.port.protocol
            ),
        );
    }
    let unix = s.bind.strip_prefix(UNIX_PREFIX);
    if s.port.number != 0 || unix.is_none() {
        check_port(issues, format!("{at}.port.number"), s.port.number);
    }
    if s.port.target_port.is_some_and(|t| t != 0) {
        issues.error(format!("{at}.port.targetPort"), "has no effect on Gateways");
    }
    if s.port.name.is_empty() {
        issues.error(format!("{at}.port.name"), "is required");
    }
    let port_ok = issues.errors().count() == before;

    match unix {
        Some(path) => {
            if let Err(e) = validate_unix_path(path) {
                issues.error(format!("{at}.bind"), e);
            }
            if s.port.number != 0 {
                issues.error(
                    format!("{at}.port.number"),
                    "must be 0 when binding to a unix domain socket",
                );
            }
        }
        None if !s.bind.is_empty() && !is_ip(&s.bind) => {
            issues.error(
                format!("{at}.bind"),
                format!("{:?} is not an IP address", s.bind),
            );
        }
        None => {}
    }

    if let Some(tls) = &s.tls {
        check_server_tls(issues, &format!("{at}.tls"), tls);
    }
    if port_ok {
        match &s.tls {
            None if protocol.is_tls() => {
                issues.error(format!("{at}.tls"), "is required for HTTPS and TLS servers");
            }
            Some(tls) if !protocol.is_tls() => {
                // Plain HTTP may carry only an httpsRedirect.
                let redirect_only = tls.is_passthrough()
                    && tls.ca_certificates.is_empty()
                    && tls.private_key.is_empty()
                    && tls.server_certificate.is_empty();
                if !protocol.is_http() {
                    issues.error(
                        format!("{at}.tls"),
                        "only HTTPS and TLS servers can have TLS settings",
                    );
                } else if !redirect_only {
                    issues.error(
                        format!("{at}.tls"),
                        "a plain HTTP server can only use tls.httpsRedirect",
                    );
                }
            }
            _ => {}
        }
    }
}

/// Cipher suite names Istio knows (BoringSSL names).
const CIPHER_SUITES: [&str; 15] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

fn is_valid_cipher_suite(cs: &str) -> bool {
    // Expressions like `-AES128-SHA` or `[A|B]` are passed through unchecked, as Istio does.
    cs.is_empty()
        || cs == "ALL"
        || !cs.starts_with(|c: char| c.is_ascii_alphanumeric())
        || CIPHER_SUITES.contains(&cs)
}

/// Checks server TLS settings as Istio does for Gateways (and, with extra rules of their own,
/// Sidecar ingress listeners).
pub(crate) fn check_server_tls(issues: &mut Issues, at: &str, tls: &ServerTlsSettings) {
    if matches!(
        tls.min_protocol_version,
        TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1
    ) && tls.cipher_suites.is_empty()
    {
        issues.warn(
            format!("{at}.minProtocolVersion"),
            "TLS versions below 1.2 need cipherSuites: the default suites no longer cover them",
        );
    }
    if tls.max_protocol_version != TlsProtocol::TlsAuto
        && tls.min_protocol_version > tls.max_protocol_version
    {
        issues.warn(
            format!("{at}.minProtocolVersion"),
            "is above maxProtocolVersion, so no TLS version is acceptable",
        );
    }
    let mut seen = BTreeSet::new();
    for (k, cs) in tls.cipher_suites.iter().enumerate() {
        if !is_valid_cipher_suite(cs) {
            issues.warn(
                format!("{at}.cipherSuites[{k}]"),
                format!("unknown cipher suite {cs:?} is ignored"),
            );
        } else if !seen.insert(cs.as_str()) {
            issues.warn(
                format!("{at}.cipherSuites[{k}]"),
                format!("duplicate cipher suite {cs:?} is ignored"),
            );
        }
    }

    if tls.mode == ServerTlsMode::IstioMutual {
        for (name, set) in [
            ("serverCertificate", !tls.server_certificate.is_empty()),
            ("privateKey", !tls.private_key.is_empty()),
            ("caCertificates", !tls.ca_certificates.is_empty()),
            ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ("credentialName", !tls.credential_name.is_empty()),
            ("credentialNames", !tls.credential_names.is_empty()),
        ] {
            if set {
                issues.error(
                    format!("{at}.{name}"),
                    "cannot be set with ISTIO_MUTUAL, which uses the mesh's certificates",
                );
            }
        }
        return;
    }

    let has_certs = !tls.ca_crl.is_empty()
        || !tls.server_certificate.is_empty()
        || !tls.private_key.is_empty()
        || !tls.ca_certificates.is_empty()
        || !tls.tls_certificates.is_empty()
        || !tls.credential_name.is_empty()
        || !tls.credential_names.is_empty();
    if tls.is_passthrough() && has_certs {
        issues.warn(
            at,
            "certificates are ignored in PASSTHROUGH and AUTO_PASSTHROUGH modes",
        );
    }

    let sources = usize::from(!tls.server_certificate.is_empty() && !tls.private_key.is_empty())
        + usize::from(!tls.credential_name.is_empty())
        + usize::from(!tls.credential_names.is_empty())
        + usize::from(!tls.tls_certificates.is_empty());
    if sources > 1 {
        issues.error(
            at,
            "only one of credentialName, credentialNames, serverCertificate/privateKey or tlsCertificates may be set",
        );
    }

    let terminating = matches!(
        tls.mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    if terminating && (!tls.credential_name.is_empty() || !tls.credential_names.is_empty()) {
        // The Secret supplies the certificate, key and client CA.
        if tls.credential_names.len() > 2 {
            issues.error(
                format!("{at}.credentialNames"),
                "at most two credentials are allowed",
            );
        }
        return;
    }
    if terminating {
        let mutual = tls.mode != ServerTlsMode::Simple;
        let mode = if mutual { "MUTUAL" } else { "SIMPLE" };
        if mutual && tls.ca_certificates.is_empty() {
            issues.error(
                format!("{at}.caCertificates"),
                format!("{mode} TLS needs a client CA bundle (or a credentialName)"),
            );
        }
        if tls.tls_certificates.len() > 2 {
            issues.warn(
                format!("{at}.tlsCertificates"),
                "at most two server certificates are used",
            );
        }
        if tls.tls_certificates.is_empty() {
            if tls.server_certificate.is_empty() {
                issues.error(
                    format!("{at}.serverCertificate"),
                    format!("{mode} TLS needs a server certificate (or a credentialName)"),
                );
            }
            if tls.private_key.is_empty() {
                issues.error(
                    format!("{at}.privateKey"),
                    format!("{mode} TLS needs a private key (or a credentialName)"),
                );
            }
        }
        for (k, c) in tls.tls_certificates.iter().enumerate() {
            if c.server_certificate.is_empty() {
                issues.error(
                    format!("{at}.tlsCertificates[{k}].serverCertificate"),
                    "is required",
                );
            }
            if c.private_key.is_empty() {
                issues.error(
                    format!("{at}.tlsCertificates[{k}].privateKey"),
                    "is required",
                );
            }
        }
    }
    if !tls.ca_crl.is_empty() {
        if !tls.credential_name.is_empty() {
            issues.error(
                format!("{at}.caCrl"),
                "cannot be used with credentialName; put the CRL in the credential",
            );
        }
        if tls.mode == ServerTlsMode::Simple {
            issues.error(format!("{at}.caCrl"), "is not supported with SIMPLE TLS");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Gateway;
    use super::*;
    use crate::{Object, parse_object};

    fn parse(yaml: &str) -> Gateway {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        match parse_object(v, "default").expect("parses").object {
            Object::Gateway(g) => g,
            other => panic!("not a Gateway: {other:?}"),
        }
    }

    /// A Gateway named `gw` in namespace `shop` with the given spec (YAML, unindented).
    fn mk_gateway(spec_yaml: &str) -> Gateway {
        let indented: String = spec_yaml.lines().map(|l| format!("  {l}\n")).collect();
        parse(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: shop\nspec:\n{indented}"
        ))
    }

    fn issues_of(g: &Gateway) -> Issues {
        Object::Gateway(g.clone()).validate()
    }

    fn error_fields(g: &Gateway) -> Vec<String> {
        issues_of(g).errors().map(|i| i.field.clone()).collect()
    }

    fn warning_fields(g: &Gateway) -> Vec<String> {
        issues_of(g).warnings().map(|i| i.field.clone()).collect()
    }

    const BOOKINFO: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: my-gateway
  namespace: some-config-namespace
spec:
  selector:
    app: my-gateway-controller
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - uk.bookinfo.com
    - eu.bookinfo.com
    tls:
      httpsRedirect: true
  - port:
      number: 443
      name: https-443
      protocol: HTTPS
    hosts:
    - uk.bookinfo.com
    - eu.bookinfo.com
    tls:
      mode: SIMPLE
      serverCertificate: /etc/certs/servercert.pem
      privateKey: /etc/certs/privatekey.pem
  - port:
      number: 9443
      name: https-9443
      protocol: HTTPS
    hosts:
    - "bookinfo-namespace/*.bookinfo.com"
    tls:
      mode: SIMPLE
      credentialName: bookinfo-secret
      minProtocolVersion: TLSV1_2
      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
  - port:
      number: 2379
      name: mongo
      protocol: MONGO
    hosts:
    - "*"
  - port:
      number: 8443
      name: https-mutual
      protocol: HTTPS
    hosts: ["./*.example.com"]
    tls:
      mode: MUTUAL
      credentialName: example-secret
"#;

    #[test]
    fn parses_gateway_with_simple_tls_and_redirect() {
        let g = parse(BOOKINFO);
        let s = &g.spec;
        assert_eq!(s.selector["app"], "my-gateway-controller");
        assert_eq!(s.servers.len(), 5);
        let http = &s.servers[0];
        assert_eq!(http.port.number, 80);
        assert_eq!(http.protocol(), Protocol::Http);
        assert!(http.is_https_redirect());
        let https = &s.servers[1];
        assert_eq!(https.protocol(), Protocol::Https);
        let tls = https.tls.as_ref().expect("tls");
        assert_eq!(tls.mode, ServerTlsMode::Simple);
        assert_eq!(tls.server_certificate, "/etc/certs/servercert.pem");
        let sds = s.servers[2].tls.as_ref().expect("tls");
        assert_eq!(sds.credential_name, "bookinfo-secret");
        assert_eq!(sds.min_protocol_version, TlsProtocol::TlsV1_2);
        assert_eq!(
            s.servers[2].namespaced_hosts().collect::<Vec<_>>(),
            [("bookinfo-namespace", "*.bookinfo.com")]
        );
        assert_eq!(
            s.servers[1].namespaced_hosts().next(),
            Some(("*", "uk.bookinfo.com"))
        );
        let issues = issues_of(&g);
        assert!(issues.items().is_empty(), "{:#?}", issues.items());
    }

    #[test]
    fn round_trips() {
        let g = parse(BOOKINFO);
        let json = serde_json::to_value(&g).expect("serialize");
        let again: Gateway = serde_json::from_value(json).expect("re-parse");
        assert_eq!(again, g);
    }

    #[test]
    fn protocol_is_case_insensitive() {
        let g = mk_gateway(
            "servers:\n- port: {number: 80, name: http, protocol: http}\n  hosts: ['*']\n",
        );
        assert!(error_fields(&g).is_empty());
        assert_eq!(g.spec.servers[0].protocol(), Protocol::Http);
    }

    #[test]
    fn missing_required_fields_are_parse_errors() {
        let v: serde_json::Value = serde_yaml_ng::from_str(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n  - port: {number: 80, protocol: HTTP}\n    hosts: ['*']\n",
        )
        .expect("yaml");
        let err = parse_object(v, "default")
            .expect_err("no port name")
            .to_string();
        assert!(err.contains("spec.servers[0].port"), "{err}");
        assert!(err.contains("name"), "{err}");
    }

    #[test]
    fn servers_are_required() {
        let g = mk_gateway("selector: {istio: ingressgateway}\n");
        assert_eq!(error_fields(&g), ["spec.servers"]);
    }

    #[test]
    fn gateway_names_have_no_dots() {
        let g = parse(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: my.gw}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n",
        );
        assert_eq!(error_fields(&g), ["metadata.name"]);
    }

    #[test]
    fn server_ports_and_hosts() {
        let g = mk_gateway(concat!(
            "servers:\n",
            "- port: {number: 0, name: '', protocol: SMTP, targetPort: 8080}\n",
            "  hosts: []\n",
            "- port: {number: 81, name: web, protocol: HTTP}\n",
            "  hosts: [reviews, 'ns/foo*.com', 'Bad_NS/a.com', '/a.com', 10.0.0.1, 'bad host.com']\n",
            "  bind: not-an-ip\n",
            "- port: {number: 82, name: web, protocol: HTTP}\n",
            "  hosts: ['*.example.com']\n",
            "- port: {number: 0, name: uds, protocol: HTTP}\n",
            "  bind: unix:///var/run/gw.sock\n",
            "  hosts: ['*']\n",
            "- port: {number: 83, name: uds2, protocol: HTTP}\n",
            "  bind: unix://relative\n",
            "  hosts: ['*']\n",
        ));
        let s = "spec.servers";
        assert_eq!(
            error_fields(&g),
            [
                format!("{s}[0].hosts"),
                format!("{s}[0].port.protocol"),
                format!("{s}[0].port.number"),
                format!("{s}[0].port.targetPort"),
                format!("{s}[0].port.name"),
                format!("{s}[1].hosts[0]"),
                format!("{s}[1].hosts[1]"),
                format!("{s}[1].hosts[2]"),
                format!("{s}[1].hosts[3]"),
                format!("{s}[1].hosts[5]"),
                format!("{s}[1].bind"),
                format!("{s}[2].port.name"),
                format!("{s}[4].bind"),
                format!("{s}[4].port.number"),
            ]
        );
    }

    #[test]
    fn tls_required_and_allowed() {
        let g = mk_gateway(concat!(
            "servers:\n",
            "- port: {number: 443, name: https, protocol: HTTPS}\n",
            "  hosts: ['*']\n",
            "- port: {number: 80, name: http, protocol: HTTP}\n",
            "  hosts: ['*']\n",
            "  tls: {httpsRedirect: true, serverCertificate: /a.pem}\n",
            "- port: {number: 81, name: tcp, protocol: TCP}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: PASSTHROUGH}\n",
            "- port: {number: 82, name: tls, protocol: TLS}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: PASSTHROUGH, httpsRedirect: true}\n",
        ));
        assert_eq!(
            error_fields(&g),
            [
                "spec.servers[0].tls",
                "spec.servers[1].tls",
                "spec.servers[2].tls"
            ]
        );
        assert_eq!(
            warning_fields(&g),
            ["spec.servers[1].tls", "spec.servers[3].tls.httpsRedirect"]
        );
    }

    #[test]
    fn tls_certificate_sources() {
        let g = mk_gateway(concat!(
            "servers:\n",
            "- port: {number: 443, name: a, protocol: HTTPS}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: SIMPLE}\n",
            "- port: {number: 444, name: b, protocol: HTTPS}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}\n",
            "- port: {number: 445, name: c, protocol: HTTPS}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: SIMPLE, credentialName: x, serverCertificate: /c.pem, privateKey: /k.pem}\n",
            "- port: {number: 446, name: d, protocol: HTTPS}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: ISTIO_MUTUAL, credentialName: x}\n",
            "- port: {number: 447, name: e, protocol: HTTPS}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, caCrl: /crl.pem}\n",
            "- port: {number: 448, name: f, protocol: HTTPS}\n",
            "  hosts: ['*']\n",
            "  tls: {mode: OPTIONAL_MUTUAL, tlsCertificates: [{serverCertificate: /c.pem}]}\n",
        ));
        let s = "spec.servers";
        assert_eq!(
            error_fields(&g),
            [
                format!("{s}[0].tls.serverCertificate"),
                format!("{s}[0].tls.privateKey"),
                format!("{s}[1].tls.caCertificates"),
                format!("{s}[2].tls"),
                format!("{s}[3].tls.credentialName"),
                format!("{s}[4].tls.caCrl"),
                format!("{s}[5].tls.caCertificates"),
                format!("{s}[5].tls.tlsCertificates[0].privateKey"),
            ]
        );
    }

    #[test]
    fn tls_versions_and_ciphers_warn() {
        let g = mk_gateway(
            "servers:\n- port: {number: 443, name: a, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: x, minProtocolVersion: TLSV1_1, maxProtocolVersion: TLSV1_3}\n- port: {number: 444, name: b, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: SIMPLE, credentialName: x, cipherSuites: [NOPE, AES128-SHA, AES128-SHA, '-DES-CBC3-SHA']}\n",
        );
        assert!(error_fields(&g).is_empty());
        assert_eq!(
            warning_fields(&g),
            [
                "spec.servers[0].tls.minProtocolVersion",
                "spec.servers[1].tls.cipherSuites[0]",
                "spec.servers[1].tls.cipherSuites[2]",
            ]
        );
    }

    #[test]
    fn selector_labels_are_checked() {
        let g = mk_gateway(
            "selector: {'bad key!': x, app: '-bad'}\nservers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n",
        );
        assert_eq!(
            warning_fields(&g),
            ["spec.selector[app]", "spec.selector[bad key!]"]
        );
    }
}
