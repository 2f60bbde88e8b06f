//! Validation findings: what is wrong (or questionable) in an object, and which field says so.

use std::fmt;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Valid but questionable: the object is used, the user should look.
    Warning,
    /// Invalid: the object is refused and never reaches a proxy.
    Error,
}

/// One finding about one field of an object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// Path of the field, in the manifest's own spelling (`spec.http[0].route[1].weight`).
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        if self.field.is_empty() {
            write!(f, "{sev}: {}", self.message)
        } else {
            write!(f, "{sev}: {}: {}", self.field, self.message)
        }
    }
}

/// A collector of findings, passed down through validators.
#[derive(Debug, Default, Clone)]
pub struct Issues {
    items: Vec<Issue>,
}

impl Issues {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an error on `field`.
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field.into(), message.into());
    }

    /// Records a warning on `field`.
    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field.into(), message.into());
    }

    fn push(&mut self, severity: Severity, field: String, message: String) {
        self.items.push(Issue {
            severity,
            field,
            message,
        });
    }

    /// Adds findings gathered elsewhere.
    pub fn extend(&mut self, other: impl IntoIterator<Item = Issue>) {
        self.items.extend(other);
    }

    /// True if any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|i| i.severity == Severity::Error)
    }

    /// The findings, in the order they were recorded.
    pub fn items(&self) -> &[Issue] {
        &self.items
    }

    /// The findings, owned.
    pub fn into_vec(self) -> Vec<Issue> {
        self.items
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Issue> {
        self.items.iter().filter(|i| i.severity == Severity::Error)
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Issue> {
        self.items
            .iter()
            .filter(|i| i.severity == Severity::Warning)
    }
}

/// Checks a DNS-1123 label (`reviews`, `v1`): lower-case alphanumerics and '-', at most 63.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a DNS-1123 subdomain (`reviews.default.svc.cluster.local`), at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Checks a label key (`app`, `topology.kubernetes.io/zone`).
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return false;
    }
    is_label_value(name) && !name.is_empty()
}

/// Checks a label value: empty, or at most 63 alphanumerics, '-', '_' or '.', starting and
/// ending with an alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(is_label_key("app"));
        assert!(is_label_key("topology.kubernetes.io/zone"));
        assert!(!is_label_key("Bad Key"));
        assert!(!is_label_key("/x"));
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_x"));
        assert!(!is_label_value("-v1"));
    }

    #[test]
    fn dns() {
        assert!(is_dns1123_label("reviews"));
        assert!(!is_dns1123_label("Reviews"));
        assert!(is_dns1123_subdomain("reviews.default.svc.cluster.local"));
        assert!(!is_dns1123_subdomain("reviews..local"));
    }

    #[test]
    fn collector() {
        let mut i = Issues::new();
        i.warn("spec.x", "odd");
        assert!(!i.has_errors());
        i.error("spec.y", "bad");
        assert!(i.has_errors());
        assert_eq!(i.errors().count(), 1);
        assert_eq!(i.items()[1].to_string(), "error: spec.y: bad");
    }
}
