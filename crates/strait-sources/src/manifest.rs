//! Reading one manifest file: every YAML document (and every item of a `List`) becomes a
//! validated object or a reported problem.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use strait_api::{Issue, Object, ObjectRef, ParseError, Severity, parse_object};

/// A problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Index of the YAML document in the file (from 0), when known.
    pub document: Option<usize>,
    /// The object concerned, when known.
    pub object: Option<ObjectRef>,
    /// The field concerned (`spec.ports[0].port`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
    /// Error (object refused) or warning (object used).
    pub severity: Severity,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, " (document {d})")?;
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {sev}: {}", self.reason)
    }
}

/// What a file holds.
#[derive(Debug, Default)]
pub struct FileContent {
    /// Valid objects, with the index of the document each came from.
    pub objects: Vec<(usize, Object)>,
    /// Objects whose new content is invalid: their previous version should stay.
    pub refused: Vec<ObjectRef>,
    /// True when part of the file could not be read at all (YAML syntax), so that objects
    /// may be missing from `objects` without having been removed by the author.
    pub incomplete: bool,
    /// Everything worth telling the user, errors and warnings.
    pub problems: Vec<Problem>,
    /// Documents of kinds strait does not handle (Deployments, …), skipped quietly.
    pub ignored: usize,
}

fn identity(v: &Value, default_namespace: &str) -> Option<ObjectRef> {
    let api_version = v.get("apiVersion")?.as_str()?;
    let kind = strait_api::Kind::from_type(api_version, v.get("kind")?.as_str()?)?;
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = if kind.is_namespaced() {
        meta.get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(default_namespace)
    } else {
        ""
    };
    Some(ObjectRef::new(kind, ns, name))
}

fn issue_problem(file: &Path, doc: usize, object: &ObjectRef, issue: &Issue) -> Problem {
    Problem {
        file: file.to_path_buf(),
        document: Some(doc),
        object: Some(object.clone()),
        field: (!issue.field.is_empty()).then(|| issue.field.clone()),
        reason: issue.message.clone(),
        severity: issue.severity,
    }
}

/// Parses and validates manifest text. `file` names it in problems.
pub fn parse_manifests(file: &Path, text: &str, default_namespace: &str) -> FileContent {
    let mut out = FileContent::default();
    let mut values: Vec<(usize, Value)> = Vec::new();
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(v) if v.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in v
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    values.push((doc, item.clone()));
                }
            }
            Ok(v) => values.push((doc, v)),
            Err(e) => {
                out.incomplete = true;
                out.problems.push(Problem {
                    file: file.to_path_buf(),
                    document: Some(doc),
                    object: None,
                    field: None,
                    reason: format!("not valid YAML: {e}"),
                    severity: Severity::Error,
                });
                // The YAML stream cannot be trusted past a syntax error.
                break;
            }
        }
    }
    for (doc, v) in values {
        let id = identity(&v, default_namespace);
        match parse_object(v, default_namespace) {
            Ok(parsed) => {
                let r = parsed.object.reference();
                let issues = parsed.object.validate();
                for w in &parsed.warnings {
                    out.problems.push(issue_problem(file, doc, &r, w));
                }
                for i in issues.items() {
                    out.problems.push(issue_problem(file, doc, &r, i));
                }
                if issues.has_errors() {
                    out.refused.push(r);
                } else {
                    out.objects.push((doc, parsed.object));
                }
            }
            Err(ParseError::UnsupportedKind { .. }) => out.ignored += 1,
            Err(e) => {
                let (field, reason) = match &e {
                    ParseError::Field { field, reason, .. } => {
                        ((!field.is_empty()).then(|| field.clone()), reason.clone())
                    }
                    other => (None, other.to_string()),
                };
                match &id {
                    Some(r) => out.refused.push(r.clone()),
                    None => out.incomplete = true,
                }
                out.problems.push(Problem {
                    file: file.to_path_buf(),
                    document: Some(doc),
                    object: id,
                    field,
                    reason,
                    severity: Severity::Error,
                });
            }
        }
    }
    out
}

/// Reads and parses one manifest file.
pub fn load_file(path: &Path, default_namespace: &str) -> FileContent {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_manifests(path, &text, default_namespace),
        Err(e) => FileContent {
            incomplete: true,
            problems: vec![Problem {
                file: path.to_path_buf(),
                document: None,
                object: None,
                field: None,
                reason: format!("cannot read: {e}"),
                severity: Severity::Error,
            }],
            ..Default::default()
        },
    }
}

/// True for file names the directory source reads.
pub fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_problems() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec: {ports: [{port: 99999, name: http}]}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: listed}
  spec: {ports: [{port: 81}]}
---
apiVersion: v1
kind: Service
metadata: {name: typo}
spec: {ports: [{port: "eighty"}]}
"#;
        let c = parse_manifests(Path::new("m.yaml"), text, "default");
        let names: Vec<_> = c.objects.iter().map(|(_, o)| o.reference().name).collect();
        assert_eq!(names, ["web", "listed"]);
        assert_eq!(c.ignored, 1);
        assert!(!c.incomplete);
        assert_eq!(
            c.refused,
            vec![
                ObjectRef::new(strait_api::Kind::Service, "shop", "bad"),
                ObjectRef::new(strait_api::Kind::Service, "default", "typo"),
            ]
        );
        let bad = &c.problems[0];
        assert_eq!(bad.document, Some(2));
        assert_eq!(bad.field.as_deref(), Some("spec.ports[0].port"));
        assert!(
            bad.to_string()
                .starts_with("m.yaml (document 2): Service shop/bad: spec.ports[0].port: error:")
        );
        let typo = &c.problems[1];
        assert_eq!(typo.document, Some(4));
        assert_eq!(typo.field.as_deref(), Some("spec.ports[0].port"));
    }

    #[test]
    fn syntax_errors_mark_the_file_incomplete() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkey: [unclosed\n";
        let c = parse_manifests(Path::new("m.yaml"), text, "default");
        assert!(c.incomplete);
        assert_eq!(c.objects.len(), 1);
        assert!(c.problems[0].reason.contains("not valid YAML"));
    }

    #[test]
    fn manifest_names() {
        assert!(is_manifest(Path::new("a/b.yaml")));
        assert!(is_manifest(Path::new("b.yml")));
        assert!(!is_manifest(Path::new(".b.yaml")));
        assert!(!is_manifest(Path::new("b.json")));
        assert!(!is_manifest(Path::new("b.yaml.swp")));
    }
}
