//! Checks across objects: what each object is valid on its own but questionable or broken
//! together with the rest of the mesh (a route to a subset no DestinationRule defines, a
//! destination host that matches no service, two VirtualServices for one host).
//!
//! `strait validate` prints these; `strait serve` logs them and lists them in
//! `/debug/problems`. None of them stops config from reaching proxies: like Istio, strait
//! translates what it can (a route to an undefined subset answers 503).

use std::collections::BTreeSet;

use strait_api::istio::Destination;
use strait_api::{Kind, Severity};
use strait_model::{ConfigKey, Labels, MeshSnapshot};

use crate::config::{ConfigIndex, ConfigProblem, MESH, qualify_gateway, resolve_host};

fn warn(kind: Kind, object: &ConfigKey, field: String, message: String) -> ConfigProblem {
    ConfigProblem {
        severity: Severity::Warning,
        kind,
        object: object.clone(),
        field,
        message,
    }
}

/// True when a host is served by something strait knows: a Service, or (for hosts outside
/// the cluster domain) anything, since external hosts may be routed by ServiceEntries or
/// passed through.
fn known_host(snap: &MeshSnapshot, host: &str) -> bool {
    host.contains('*')
        || snap.service_by_host(host).is_some()
        || !host.ends_with(&format!(".svc.{}", snap.domain))
}

fn check_destination(
    snap: &MeshSnapshot,
    config: &ConfigIndex,
    vs: &ConfigKey,
    field: &str,
    d: &Destination,
    out: &mut Vec<ConfigProblem>,
) {
    let host = resolve_host(&d.host, &vs.namespace, &snap.domain);
    let svc = snap.service_by_host(&host);
    if !known_host(snap, &host) {
        out.push(warn(
            Kind::VirtualService,
            vs,
            format!("{field}.destination.host"),
            format!("{host} matches no service: requests routed here fail"),
        ));
    }
    if let Some(s) = svc
        && d.port.is_none()
        && s.ports.len() > 1
    {
        out.push(warn(
            Kind::VirtualService,
            vs,
            format!("{field}.destination.port"),
            format!(
                "{host} has {} ports; without a port the listener's port is used",
                s.ports.len()
            ),
        ));
    }
    if let Some(p) = d.port_number()
        && let Some(s) = svc
        && s.port(p as u16).is_none()
    {
        out.push(warn(
            Kind::VirtualService,
            vs,
            format!("{field}.destination.port.number"),
            format!("{host} has no port {p}"),
        ));
    }
    if d.subset.is_empty() {
        return;
    }
    let dr = config.destination_rule(
        &host,
        svc.map(|s| &*s.key.namespace),
        &vs.namespace,
        &Labels::new(),
    );
    match dr {
        None => out.push(warn(
            Kind::VirtualService,
            vs,
            format!("{field}.destination.subset"),
            format!(
                "subset {:?} of {host} is not defined: no DestinationRule for the host is visible from namespace {}; requests routed here get 503 (no healthy upstream)",
                d.subset, vs.namespace
            ),
        )),
        Some(dr) if dr.subset(&d.subset).is_none() => out.push(warn(
            Kind::VirtualService,
            vs,
            format!("{field}.destination.subset"),
            format!(
                "subset {:?} is not defined by DestinationRule {} for {host}; requests routed here get 503 (no healthy upstream)",
                d.subset,
                dr.sources.first().map(ToString::to_string).unwrap_or_default()
            ),
        )),
        Some(_) => {}
    }
}

/// Every cross-object problem of a snapshot, sorted.
pub fn analyze(snap: &MeshSnapshot, config: &ConfigIndex) -> Vec<ConfigProblem> {
    let mut out: Vec<ConfigProblem> = config.problems().to_vec();
    let gateways: BTreeSet<String> = snap
        .config
        .gateways
        .keys()
        .map(|k| format!("{}/{}", k.namespace, k.name))
        .collect();
    for (key, vs) in snap.config.virtual_services.iter() {
        let spec = &vs.spec;
        for (i, g) in spec.gateways.iter().enumerate() {
            let q = qualify_gateway(g, &key.namespace);
            if q != MESH && !gateways.contains(&q) {
                out.push(warn(
                    Kind::VirtualService,
                    key,
                    format!("spec.gateways[{i}]"),
                    format!("Gateway {q} does not exist"),
                ));
            }
        }
        if spec.applies_to_mesh() {
            for (i, h) in spec.hosts.iter().enumerate() {
                let host = resolve_host(h, &key.namespace, &snap.domain);
                if !known_host(snap, &host) {
                    out.push(warn(
                        Kind::VirtualService,
                        key,
                        format!("spec.hosts[{i}]"),
                        format!("{host} matches no service: sidecars have nothing to apply these rules to"),
                    ));
                }
            }
        }
        for (i, r) in spec.http.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_destination(
                    snap,
                    config,
                    key,
                    &format!("spec.http[{i}].route[{j}]"),
                    &d.destination,
                    &mut out,
                );
            }
            if let Some(m) = &r.mirror {
                check_destination(
                    snap,
                    config,
                    key,
                    &format!("spec.http[{i}].mirror"),
                    m,
                    &mut out,
                );
            }
            if let Some(red) = &r.redirect
                && !matches!(red.redirect_code, 0 | 301 | 302 | 303 | 307 | 308)
            {
                out.push(warn(
                    Kind::VirtualService,
                    key,
                    format!("spec.http[{i}].redirect.redirectCode"),
                    format!("Envoy answers only 301, 302, 303, 307 or 308; this rule is dropped (was {})", red.redirect_code),
                ));
            }
        }
        for (i, r) in spec.tcp.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_destination(
                    snap,
                    config,
                    key,
                    &format!("spec.tcp[{i}].route[{j}]"),
                    &d.destination,
                    &mut out,
                );
            }
        }
        for (i, r) in spec.tls.iter().enumerate() {
            for (j, d) in r.route.iter().enumerate() {
                check_destination(
                    snap,
                    config,
                    key,
                    &format!("spec.tls[{i}].route[{j}]"),
                    &d.destination,
                    &mut out,
                );
            }
        }
    }
    for (key, dr) in snap.config.destination_rules.iter() {
        let host = resolve_host(&dr.spec.host, &key.namespace, &snap.domain);
        if !known_host(snap, &host) {
            out.push(warn(
                Kind::DestinationRule,
                key,
                "spec.host".into(),
                format!("{host} matches no service"),
            ));
        }
    }
    for (key, l) in snap.config.local_rate_limits.iter() {
        let host = resolve_host(&l.spec.host, &key.namespace, &snap.domain);
        if !known_host(snap, &host) {
            out.push(warn(
                Kind::LocalRateLimit,
                key,
                "spec.host".into(),
                format!("{host} matches no service"),
            ));
        }
    }
    for (key, gw) in snap.config.gateways.iter() {
        for (i, s) in gw.spec.servers.iter().enumerate() {
            let Some(tls) = &s.tls else { continue };
            if tls.credential_name.is_empty() {
                continue;
            }
            // Gateway proxies read the Secret from their own namespace; usually the Gateway's.
            let found = snap
                .secrets
                .keys()
                .any(|(_, n)| **n == *tls.credential_name);
            if !found {
                out.push(warn(
                    Kind::Gateway,
                    key,
                    format!("spec.servers[{i}].tls.credentialName"),
                    format!("Secret {:?} does not exist: TLS handshakes on this server fail until it does", tls.credential_name),
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
