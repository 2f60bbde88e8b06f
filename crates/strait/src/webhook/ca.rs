//! The webhook's certificate authority: a self-signed CA and the serving certificate it signs
//! for the webhook's Service names.
//!
//! [`refresh`] is pure (it takes the time): it creates what is missing and renews what is due.
//! A serving certificate is renewed at two thirds of its lifetime, a CA likewise; a renewed CA
//! is published next to the old one (the bundle lists both until the old one expires), so that
//! the API server trusts the new serving certificates before they are presented.
//!
//! [`CaStore`] keeps the material: in the Secret `strait-ca-<revision>` of the system
//! namespace (replicas share it; a create race is settled by reading the winner's), or in
//! memory when there is no cluster.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use strait_api::k8s_openapi::ByteString;
use strait_api::k8s_openapi::api::core::v1::Secret;
use time::OffsetDateTime;
use tracing::{info, warn};

/// Secret key: the CA bundle (PEM, the current CA first).
pub const CA_CERT_KEY: &str = "ca-cert.pem";
/// Secret key: the current CA's private key.
pub const CA_KEY_KEY: &str = "ca-key.pem";
/// Secret key: the serving certificate.
pub const CERT_KEY: &str = "tls.crt";
/// Secret key: the serving certificate's private key.
pub const KEY_KEY: &str = "tls.key";

/// Why the CA could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Generating or signing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// Stored material could not be read.
    #[error("stored CA material: {0}")]
    Material(String),
    /// The Kubernetes API refused or failed.
    #[error("Secret {name}: {source}")]
    Kube {
        /// The Secret.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// Concurrent writers kept winning.
    #[error("Secret {0} kept changing under us")]
    Contended(String),
}

/// What the CA issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// The revision (names the CA and the Service).
    pub revision: String,
    /// The system namespace (the Service's).
    pub namespace: String,
    /// Cluster DNS suffix.
    pub domain: String,
    /// More names (DNS or IP) for the serving certificate.
    pub extra_sans: Vec<String>,
    /// Lifetime of a CA.
    pub ca_lifetime: Duration,
    /// Lifetime of a serving certificate.
    pub serving_lifetime: Duration,
}

impl CaOptions {
    /// Defaults: a ten-year CA, 30-day serving certificates.
    pub fn new(revision: &str, namespace: &str, domain: &str) -> Self {
        CaOptions {
            revision: revision.to_string(),
            namespace: namespace.to_string(),
            domain: domain.to_string(),
            extra_sans: Vec::new(),
            ca_lifetime: Duration::from_secs(10 * 365 * 24 * 3600),
            serving_lifetime: Duration::from_secs(30 * 24 * 3600),
        }
    }

    /// The names the serving certificate covers: the revision's Service in every spelling the
    /// API server may use, then the extra names.
    pub fn serving_sans(&self) -> Vec<String> {
        let svc = format!("strait-{}", self.revision);
        let ns = &self.namespace;
        let mut out = vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.{}", self.domain),
            format!("{svc}.{ns}"),
            svc,
        ];
        for s in &self.extra_sans {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// The Secret holding the material.
    pub fn secret_name(&self) -> String {
        format!("strait-ca-{}", self.revision)
    }
}

/// A CA and a serving certificate, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The CA certificates to trust: the current CA first, then older ones not yet expired.
    pub ca_bundle: String,
    /// The current CA's key.
    pub ca_key: String,
    /// The serving certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Result<String, CaError> {
    let bytes = data
        .get(key)
        .ok_or_else(|| CaError::Material(format!("no {key}")))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| CaError::Material(format!("{key} is not text")))
}

impl Material {
    /// Reads the data of a Secret.
    pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Result<Material, CaError> {
        let m = Material {
            ca_bundle: text(data, CA_CERT_KEY)?,
            ca_key: text(data, CA_KEY_KEY)?,
            cert: text(data, CERT_KEY)?,
            key: text(data, KEY_KEY)?,
        };
        // Everything must parse, or it is not usable material.
        split_pem(&m.ca_bundle)
            .first()
            .ok_or_else(|| CaError::Material("empty CA bundle".into()))
            .and_then(|c| validity(c))?;
        validity(&m.cert)?;
        KeyPair::from_pem(&m.ca_key)?;
        KeyPair::from_pem(&m.key)?;
        Ok(m)
    }

    /// The data of a Secret.
    pub fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_CERT_KEY, &self.ca_bundle),
            (CA_KEY_KEY, &self.ca_key),
            (CERT_KEY, &self.cert),
            (KEY_KEY, &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
        .collect()
    }
}

/// The PEM certificates of a bundle, one string each.
pub fn split_pem(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in bundle.lines() {
        if line.starts_with("-----BEGIN ") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

fn to_system(t: &x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// A certificate's validity period.
pub fn validity(pem: &str) -> Result<(SystemTime, SystemTime), CaError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CaError::Material(format!("PEM: {e}")))?;
    let cert = p
        .parse_x509()
        .map_err(|e| CaError::Material(format!("certificate: {e}")))?;
    let v = cert.validity();
    Ok((to_system(&v.not_before), to_system(&v.not_after)))
}

/// The subject alternative names of a certificate (DNS names and IPs, as text).
pub fn sans(pem: &str) -> Vec<String> {
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Vec::new();
    };
    let Ok(cert) = p.parse_x509() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    out.extend(ip.map(|i| i.to_string()));
                }
                _ => {}
            }
        }
    }
    out
}

/// True when `pem` was issued by the CA certificate `ca`.
fn issued_by(pem: &str, ca: &str) -> bool {
    let parse = |s: &str| {
        x509_parser::pem::parse_x509_pem(s.as_bytes())
            .ok()
            .map(|(_, p)| p)
    };
    let (Some(leaf), Some(ca)) = (parse(pem), parse(ca)) else {
        return false;
    };
    let (Ok(leaf), Ok(ca)) = (leaf.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    leaf.issuer().as_raw() == ca.subject().as_raw()
        && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// True once two thirds of the certificate's lifetime have passed.
pub fn renewal_due(pem: &str, now: SystemTime) -> bool {
    let Ok((nb, na)) = validity(pem) else {
        return true;
    };
    let life = na.duration_since(nb).unwrap_or_default();
    now >= nb + life * 2 / 3
}

fn datetime(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// Certificates start a little in the past, for clocks that lag: five minutes, less for
/// short lifetimes.
fn backdate(lifetime: Duration) -> Duration {
    (lifetime / 4).min(Duration::from_secs(300))
}

/// A new self-signed CA: `(certificate, key)`.
pub fn new_ca(o: &CaOptions, now: SystemTime) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "strait");
    dn.push(
        DnType::CommonName,
        format!("strait-ca-{} {}", o.revision, now_stamp(now)),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = datetime(now - backdate(o.ca_lifetime));
    p.not_after = datetime(now + o.ca_lifetime);
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Distinguishes CAs created for the same revision (their subjects must differ, or a client
/// could not tell which one signed a certificate).
fn now_stamp(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A serving certificate for `sans` signed by the CA: `(certificate, key)`.
pub fn issue(
    ca_cert: &str,
    ca_key: &str,
    sans: &[String],
    lifetime: Duration,
    now: SystemTime,
) -> Result<(String, String), CaError> {
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "strait");
    if let Some(first) = sans.first() {
        dn.push(DnType::CommonName, first.clone());
    }
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = datetime(now - backdate(lifetime));
    p.not_after = datetime(now + lifetime);
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What [`refresh`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// A new CA was made (first start or renewal).
    pub new_ca: bool,
    /// A new serving certificate was issued.
    pub new_serving: bool,
}

/// Brings `current` up to date at `now`: a CA that is not due for renewal at the head of the
/// bundle (expired CAs dropped), and a serving certificate from that CA, for the expected
/// names, not due for renewal.
pub fn refresh(
    current: Option<&Material>,
    o: &CaOptions,
    now: SystemTime,
) -> Result<(Material, Changes), CaError> {
    let mut changes = Changes::default();
    let (mut bundle, ca_key) = match current {
        Some(m) => (split_pem(&m.ca_bundle), m.ca_key.clone()),
        None => (Vec::new(), String::new()),
    };
    // Drop expired CAs (the current one stays until replaced below).
    bundle.retain(|c| validity(c).is_ok_and(|(_, na)| na > now));
    let (ca_cert, ca_key) = match bundle.first() {
        Some(ca) if !renewal_due(ca, now) && KeyPair::from_pem(&ca_key).is_ok() => {
            (ca.clone(), ca_key)
        }
        _ => {
            let (cert, key) = new_ca(o, now)?;
            bundle.insert(0, cert.clone());
            changes.new_ca = true;
            info!(revision = %o.revision, "webhook CA created");
            (cert, key)
        }
    };
    let sans_wanted = o.serving_sans();
    let serving_ok = current.is_some_and(|m| {
        !changes.new_ca
            && issued_by(&m.cert, &ca_cert)
            && !renewal_due(&m.cert, now)
            && sans(&m.cert) == sans_wanted
            && KeyPair::from_pem(&m.key).is_ok()
    });
    let (cert, key) = match current {
        Some(m) if serving_ok => (m.cert.clone(), m.key.clone()),
        _ => {
            changes.new_serving = true;
            issue(&ca_cert, &ca_key, &sans_wanted, o.serving_lifetime, now)?
        }
    };
    Ok((
        Material {
            ca_bundle: bundle.concat(),
            ca_key,
            cert,
            key,
        },
        changes,
    ))
}

/// Where the material is kept.
pub enum CaStore {
    /// In this process only (no cluster).
    Memory(Mutex<Option<Material>>),
    /// In a Secret, shared by the replicas of the revision.
    Secret {
        /// The Secrets of the system namespace.
        api: Box<Api<Secret>>,
        /// The Secret's name.
        name: String,
        /// Its labels.
        labels: BTreeMap<String, String>,
    },
}

impl std::fmt::Debug for CaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaStore::Memory(_) => f.write_str("CaStore::Memory"),
            CaStore::Secret { name, .. } => write!(f, "CaStore::Secret({name})"),
        }
    }
}

enum Loaded {
    Missing,
    Found(Option<Material>, Option<String>),
}

impl CaStore {
    /// A store in the Secret `strait-ca-<revision>` of the namespace.
    pub fn secret(client: kube::Client, o: &CaOptions) -> CaStore {
        CaStore::Secret {
            api: Box::new(Api::namespaced(client, &o.namespace)),
            name: o.secret_name(),
            labels: [
                ("app".to_string(), "strait".to_string()),
                ("strait.io/rev".to_string(), o.revision.clone()),
            ]
            .into(),
        }
    }

    /// An in-memory store.
    pub fn memory() -> CaStore {
        CaStore::Memory(Mutex::new(None))
    }

    fn kube_err(name: &str) -> impl Fn(kube::Error) -> CaError + '_ {
        move |source| CaError::Kube {
            name: name.to_string(),
            source,
        }
    }

    async fn load(&self) -> Result<Loaded, CaError> {
        match self {
            CaStore::Memory(m) => Ok(match lock(m).clone() {
                Some(mat) => Loaded::Found(Some(mat), None),
                None => Loaded::Missing,
            }),
            CaStore::Secret { api, name, .. } => {
                let Some(secret) = api.get_opt(name).await.map_err(Self::kube_err(name))? else {
                    return Ok(Loaded::Missing);
                };
                let rv = secret.metadata.resource_version.clone();
                let material = match secret.data.as_ref().map(Material::from_secret_data) {
                    Some(Ok(m)) => Some(m),
                    Some(Err(error)) => {
                        warn!(secret = %name, %error, "unusable webhook CA material is replaced");
                        None
                    }
                    None => None,
                };
                Ok(Loaded::Found(material, rv))
            }
        }
    }

    /// Stores new material: `Ok(false)` when someone else wrote first.
    async fn write(&self, m: &Material, rv: Option<String>, create: bool) -> Result<bool, CaError> {
        match self {
            CaStore::Memory(slot) => {
                *lock(slot) = Some(m.clone());
                Ok(true)
            }
            CaStore::Secret { api, name, labels } => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(labels.clone()),
                        resource_version: rv,
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(m.to_secret_data()),
                    ..Secret::default()
                };
                let pp = PostParams::default();
                let result = if create {
                    api.create(&pp, &secret).await
                } else {
                    api.replace(name, &pp, &secret).await
                };
                match result {
                    Ok(_) => Ok(true),
                    // 409: created by another replica first, or changed since we read it.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(Self::kube_err(name)(e)),
                }
            }
        }
    }

    /// Loads the material, makes it current (creating or renewing what is due) and stores
    /// it, settling races with other replicas by reading what they wrote.
    pub async fn sync(
        &self,
        o: &CaOptions,
        now: SystemTime,
    ) -> Result<(Material, Changes), CaError> {
        for _ in 0..5 {
            let (current, rv, create) = match self.load().await? {
                Loaded::Missing => (None, None, true),
                Loaded::Found(m, rv) => (m, rv, false),
            };
            let (next, changes) = refresh(current.as_ref(), o, now)?;
            if current.as_ref() == Some(&next) {
                return Ok((next, changes));
            }
            if self.write(&next, rv, create).await? {
                return Ok((next, changes));
            }
            info!(store = ?self, "webhook CA written by another replica first; reading theirs");
        }
        Err(CaError::Contended(format!("{self:?}")))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_options() -> CaOptions {
        CaOptions {
            ca_lifetime: Duration::from_secs(3000),
            serving_lifetime: Duration::from_secs(300),
            ..CaOptions::new("canary", "istio-system", "cluster.local")
        }
    }

    #[test]
    fn creates_then_keeps_then_renews() {
        let o = mk_options();
        let t0 = SystemTime::now();
        let (m, c) = refresh(None, &o, t0).expect("new");
        assert!(c.new_ca && c.new_serving);
        assert_eq!(
            sans(&m.cert),
            vec![
                "strait-canary.istio-system.svc",
                "strait-canary.istio-system.svc.cluster.local",
                "strait-canary.istio-system",
                "strait-canary",
            ]
        );
        assert!(issued_by(&m.cert, &m.ca_bundle));
        let (same, c) = refresh(Some(&m), &o, t0 + Duration::from_secs(10)).expect("same");
        assert_eq!(same, m);
        assert_eq!(c, Changes::default());
        // Two thirds of the serving lifetime (backdated a quarter of it): renewed, same CA.
        let (same, _) = refresh(Some(&m), &o, t0 + Duration::from_secs(170)).expect("same");
        assert_eq!(same, m);
        let (renewed, c) = refresh(Some(&m), &o, t0 + Duration::from_secs(180)).expect("renewed");
        assert!(!c.new_ca && c.new_serving, "{c:?}");
        assert_eq!(renewed.ca_bundle, m.ca_bundle);
        assert_ne!(renewed.cert, m.cert);
        // The CA itself: renewed at two thirds, the old one still trusted until it expires.
        let late = t0 + Duration::from_secs(2100);
        let (rotated, c) = refresh(Some(&renewed), &o, late).expect("rotated");
        assert!(c.new_ca && c.new_serving);
        let bundle = split_pem(&rotated.ca_bundle);
        assert_eq!(bundle.len(), 2);
        assert!(issued_by(&rotated.cert, &bundle[0]));
        assert_eq!(bundle[1], split_pem(&m.ca_bundle)[0]);
        let (after, _) =
            refresh(Some(&rotated), &o, t0 + Duration::from_secs(3300)).expect("expired");
        assert_eq!(
            split_pem(&after.ca_bundle).len(),
            1,
            "the expired CA is dropped"
        );
    }

    #[test]
    fn new_names_mean_a_new_certificate() {
        let o = mk_options();
        let now = SystemTime::now();
        let (m, _) = refresh(None, &o, now).expect("new");
        let more = CaOptions {
            extra_sans: vec!["10.0.0.7".into(), "webhook.example.com".into()],
            ..o
        };
        let (m2, c) = refresh(Some(&m), &more, now).expect("reissued");
        assert!(c.new_serving && !c.new_ca);
        assert!(sans(&m2.cert).contains(&"10.0.0.7".to_string()));
    }

    #[test]
    fn secret_data_round_trip() {
        let (m, _) = refresh(None, &mk_options(), SystemTime::now()).expect("new");
        let back = Material::from_secret_data(&m.to_secret_data()).expect("reads");
        assert_eq!(back, m);
        let mut broken = m.to_secret_data();
        broken.insert(CERT_KEY.into(), ByteString(b"junk".to_vec()));
        assert!(Material::from_secret_data(&broken).is_err());
    }

    #[tokio::test]
    async fn memory_store() {
        let store = CaStore::memory();
        let o = mk_options();
        let now = SystemTime::now();
        let (a, c) = store.sync(&o, now).await.expect("first");
        assert!(c.new_ca);
        let (b, c) = store.sync(&o, now).await.expect("second");
        assert_eq!(a, b);
        assert_eq!(c, Changes::default());
    }
}
