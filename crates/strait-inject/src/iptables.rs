//! Traffic capture: the `nat` table `strait init` loads with `iptables-restore`, so that the
//! pod's TCP traffic goes through Envoy (REDIRECT mode, as Istio's `istio-init` does it).
//!
//! - Inbound: TCP arriving for the pod goes to `virtualInbound` (15006), except excluded
//!   ports (Envoy's readiness and stats ports among them).
//! - Outbound: TCP the pod sends goes to `virtualOutbound` (15001), except Envoy's own
//!   traffic (uid/gid 1337), loopback traffic of the application, and excluded ports and
//!   destinations. Envoy's connections to the application come from 127.0.0.6 (IPv4) or ::6
//!   (IPv6) and are left alone; Envoy calling its own pod through a Service is sent to the
//!   inbound side, so that the pod's inbound configuration applies.
//!
//! [`rules`] is a pure function of a [`Capture`] and an address family.

use std::fmt;
use std::net::IpAddr;

use crate::keys;

/// Ports: every port, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// Every port (`*`).
    All,
    /// These ports (empty: none).
    List(Vec<u16>),
}

/// Destinations: every address, or a list of CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// Every destination (`*`).
    All,
    /// These CIDRs (empty: none).
    List(Vec<Cidr>),
}

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or `addr`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a comma-separated port list; `*` means every port when `star` allows it.
pub fn parse_ports(s: &str, star: bool) -> Result<Ports, String> {
    if star && s.trim() == "*" {
        return Ok(Ports::All);
    }
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{p:?} is not a port number (1-65535)"))?;
        if !out.contains(&port) {
            out.push(port);
        }
    }
    Ok(Ports::List(out))
}

/// Parses a comma-separated CIDR list; `*` means everything when `star` allows it.
pub fn parse_ranges(s: &str, star: bool) -> Result<Ranges, String> {
    if star && s.trim() == "*" {
        return Ok(Ranges::All);
    }
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(Cidr::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(Ranges::List)
}

impl Ports {
    /// The list, empty for [`Ports::All`].
    pub fn list(&self) -> &[u16] {
        match self {
            Ports::All => &[],
            Ports::List(l) => l,
        }
    }
}

impl Ranges {
    /// The list, empty for [`Ranges::All`].
    pub fn list(&self) -> &[Cidr] {
        match self {
            Ranges::All => &[],
            Ranges::List(l) => l,
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ports::All => f.write_str("*"),
            Ports::List(l) => {
                let s: Vec<String> = l.iter().map(u16::to_string).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ranges::All => f.write_str("*"),
            Ranges::List(l) => {
                let s: Vec<String> = l.iter().map(Cidr::to_string).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Envoy's uid (and gid): its traffic is never captured.
    pub proxy_uid: u32,
    /// Envoy's gid.
    pub proxy_gid: u32,
    /// Where inbound traffic is sent.
    pub inbound_capture_port: u16,
    /// Where outbound traffic is sent.
    pub outbound_capture_port: u16,
    /// Inbound ports captured.
    pub inbound_ports: Ports,
    /// Inbound ports never captured (with `*`).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations captured.
    pub outbound_ranges: Ranges,
    /// Outbound destinations never captured.
    pub exclude_outbound_ranges: Vec<Cidr>,
    /// Outbound ports captured whatever the destination.
    pub include_outbound_ports: Vec<u16>,
    /// Outbound ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            proxy_uid: keys::PROXY_UID,
            proxy_gid: keys::PROXY_UID,
            inbound_capture_port: keys::INBOUND_CAPTURE_PORT,
            outbound_capture_port: keys::OUTBOUND_CAPTURE_PORT,
            inbound_ports: Ports::All,
            exclude_inbound_ports: Vec::new(),
            outbound_ranges: Ranges::All,
            exclude_outbound_ranges: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
        }
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (`iptables-restore`).
    V4,
    /// IPv6 (`ip6tables-restore`).
    V6,
}

impl Family {
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source of Envoy's connections to the application (strait's inbound clusters bind
    /// it, as Istio's do).
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    fn has(self, c: &Cidr) -> bool {
        c.addr.is_ipv4() == (self == Family::V4)
    }
}

const INBOUND: &str = "STRAIT_INBOUND";
const IN_REDIRECT: &str = "STRAIT_IN_REDIRECT";
const OUTPUT: &str = "STRAIT_OUTPUT";
const REDIRECT: &str = "STRAIT_REDIRECT";

/// The `iptables-restore` input (the whole `nat` table) for one address family.
pub fn rules(c: &Capture, family: Family) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("*nat".into());
    for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        line(format!(":{chain} ACCEPT [0:0]"));
    }
    for chain in [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT] {
        line(format!(":{chain} - [0:0]"));
    }
    line(format!(
        "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        c.inbound_capture_port
    ));
    line(format!(
        "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        c.outbound_capture_port
    ));

    // Inbound.
    let inbound = match &c.inbound_ports {
        Ports::All => true,
        Ports::List(l) => l.iter().any(|p| !c.exclude_inbound_ports.contains(p)),
    };
    if inbound {
        line(format!("-A PREROUTING -p tcp -j {INBOUND}"));
        match &c.inbound_ports {
            Ports::All => {
                for p in &c.exclude_inbound_ports {
                    line(format!("-A {INBOUND} -p tcp -m tcp --dport {p} -j RETURN"));
                }
                line(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
            }
            Ports::List(l) => {
                for p in l.iter().filter(|p| !c.exclude_inbound_ports.contains(p)) {
                    line(format!(
                        "-A {INBOUND} -p tcp -m tcp --dport {p} -j {IN_REDIRECT}"
                    ));
                }
            }
        }
    }

    // Outbound.
    let (uid, gid) = (c.proxy_uid, c.proxy_gid);
    let localhost = family.localhost();
    line(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
    line(format!(
        "-A {OUTPUT} -s {} -o lo -j RETURN",
        family.passthrough_source()
    ));
    for (flag, id) in [("--uid-owner", uid), ("--gid-owner", gid)] {
        if inbound {
            // Envoy calling its own pod (a Service that selects it): through the inbound side.
            line(format!(
                "-A {OUTPUT} ! -d {localhost} -o lo -m owner {flag} {id} -j {IN_REDIRECT}"
            ));
        }
        // The application talking to itself over loopback.
        line(format!(
            "-A {OUTPUT} -o lo -m owner ! {flag} {id} -j RETURN"
        ));
        // Envoy's own traffic.
        line(format!("-A {OUTPUT} -m owner {flag} {id} -j RETURN"));
    }
    line(format!("-A {OUTPUT} -d {localhost} -j RETURN"));
    for p in &c.include_outbound_ports {
        line(format!(
            "-A {OUTPUT} -p tcp -m tcp --dport {p} -j {REDIRECT}"
        ));
    }
    for p in &c.exclude_outbound_ports {
        line(format!("-A {OUTPUT} -p tcp -m tcp --dport {p} -j RETURN"));
    }
    for r in c.exclude_outbound_ranges.iter().filter(|r| family.has(r)) {
        line(format!("-A {OUTPUT} -d {r} -j RETURN"));
    }
    match &c.outbound_ranges {
        Ranges::All => line(format!("-A {OUTPUT} -j {REDIRECT}")),
        Ranges::List(l) => {
            for r in l.iter().filter(|r| family.has(r)) {
                line(format!("-A {OUTPUT} -d {r} -j {REDIRECT}"));
            }
        }
    }
    line("COMMIT".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        crate::golden::check(&format!("iptables/{name}"), actual);
    }

    fn mk_capture() -> Capture {
        Capture {
            exclude_inbound_ports: vec![keys::HEALTH_PORT, keys::STATS_PORT],
            ..Capture::default()
        }
    }

    #[test]
    fn default_capture() {
        golden("default.v4", &rules(&mk_capture(), Family::V4));
        golden("default.v6", &rules(&mk_capture(), Family::V6));
    }

    #[test]
    fn excludes_and_includes() {
        let c = Capture {
            inbound_ports: parse_ports("8080, 9090,8080", true).expect("ports"),
            exclude_inbound_ports: vec![keys::HEALTH_PORT, 9090],
            outbound_ranges: parse_ranges("10.0.0.0/8,172.16.0.0/12,fd00::/8", true)
                .expect("ranges"),
            exclude_outbound_ranges: vec![Cidr::parse("10.96.0.1").expect("cidr")],
            include_outbound_ports: vec![443],
            exclude_outbound_ports: vec![5432, 6379],
            ..Capture::default()
        };
        golden("excludes.v4", &rules(&c, Family::V4));
        golden("excludes.v6", &rules(&c, Family::V6));
    }

    #[test]
    fn no_inbound_capture() {
        let c = Capture {
            inbound_ports: parse_ports("", true).expect("ports"),
            exclude_outbound_ranges: vec![Cidr::parse("169.254.169.254/32").expect("cidr")],
            ..Capture::default()
        };
        let r = rules(&c, Family::V4);
        assert!(!r.contains("PREROUTING -p tcp"), "{r}");
        assert!(
            !r.contains("-j STRAIT_IN_REDIRECT\n-A STRAIT_OUTPUT -o lo"),
            "{r}"
        );
        golden("outbound-only.v4", &r);
    }

    #[test]
    fn every_rule_is_well_formed() {
        for c in [mk_capture(), Capture::default()] {
            for fam in [Family::V4, Family::V6] {
                let r = rules(&c, fam);
                assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
                // Every jump goes to a declared chain or a target.
                for l in r.lines().filter(|l| l.starts_with("-A ")) {
                    let target = l.rsplit(" -j ").next().expect("target");
                    let target = target.split(' ').next().expect("name");
                    assert!(
                        ["RETURN", "REDIRECT"].contains(&target)
                            || r.contains(&format!(":{target} ")),
                        "{l}"
                    );
                }
                if fam == Family::V6 {
                    assert!(!r.contains("127.0.0."), "{r}");
                }
            }
        }
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_ports("*", true), Ok(Ports::All));
        assert!(parse_ports("*", false).is_err());
        assert!(parse_ports("0", true).is_err());
        assert!(parse_ports("70000", true).is_err());
        assert_eq!(parse_ports(" ", true), Ok(Ports::List(vec![])));
        assert!(parse_ranges("10.0.0.0/33", true).is_err());
        assert!(parse_ranges("banana", true).is_err());
        assert_eq!(
            parse_ranges("fd00::/8", false)
                .expect("v6")
                .list()
                .first()
                .map(|c| c.to_string()),
            Some("fd00::/8".to_string())
        );
        assert_eq!(
            Ranges::List(vec![Cidr::parse("1.2.3.4").expect("ip")]).to_string(),
            "1.2.3.4/32"
        );
    }
}
