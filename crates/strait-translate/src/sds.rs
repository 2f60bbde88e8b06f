//! TLS secrets for SDS: the Kubernetes Secrets that `credentialName` refers to, as Envoy
//! secrets named the way Istio names them (`kubernetes://<name>`, and
//! `kubernetes://<name>-cacert` for the CA).

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use strait_model::MeshSnapshot;

fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

/// The Envoy secret for an SDS name, from the first of `namespaces` holding the Kubernetes
/// Secret. `None` when the Secret (or the keys it needs) is missing.
pub fn secret(snap: &MeshSnapshot, name: &str, namespaces: &[&str]) -> Option<Secret> {
    let credential = name.strip_prefix("kubernetes://")?;
    let find = |n: &str| namespaces.iter().find_map(|ns| snap.secret(ns, n));
    if let Some(base) = credential.strip_suffix("-cacert") {
        // A Secret of that name wins; otherwise the CA inside the certificate's own Secret.
        let ca = find(credential)
            .and_then(|s| s.get(&["ca.crt", "cacert"]).cloned())
            .or_else(|| find(base).and_then(|s| s.get(&["ca.crt", "cacert"]).cloned()))?;
        return Some(Secret {
            name: name.to_string(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(&ca),
                    ..Default::default()
                },
            )),
        });
    }
    let s = find(credential)?;
    let cert = s.get(&["tls.crt", "cert"])?;
    let key = s.get(&["tls.key", "key"])?;
    Some(Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert),
            private_key: inline(key),
            ..Default::default()
        })),
    })
}
