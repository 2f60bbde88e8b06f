//! Golden tests of translation: each `testdata/<case>/` holds `input.yaml` (the manifests a
//! user would apply) and `proxy.yaml` (the Envoy node asking), and `expected.yaml` the
//! resources strait generates for it. `REFRESH_GOLDEN=1 cargo test` rewrites the expected
//! files; review the diff.

mod support;

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use strait_model::{IndexOptions, Locality, MeshIndex, Proxy, ProxyNode};

fn load_case(dir: &Path) -> (Arc<strait_model::MeshSnapshot>, Proxy) {
    let mut index = MeshIndex::new(IndexOptions::default());
    let input = std::fs::read_to_string(dir.join("input.yaml")).expect("input.yaml");
    for doc in serde_yaml_ng::Deserializer::from_str(&input) {
        let value: Value = serde::Deserialize::deserialize(doc).expect("yaml");
        if value.is_null() {
            continue;
        }
        let parsed = strait_api::parse_object(value, "default").expect("object parses");
        let issues = parsed.object.validate();
        assert!(
            !issues.has_errors(),
            "{}: {:?}",
            parsed.object.reference(),
            issues.items()
        );
        index.apply(parsed.object);
    }
    let (snap, _) = index.snapshot();
    let proxy: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("proxy.yaml")).expect("proxy.yaml"),
    )
    .expect("proxy yaml");
    let locality = proxy
        .get("locality")
        .and_then(Value::as_str)
        .map(Locality::parse);
    let node = ProxyNode::parse(
        proxy["id"].as_str().expect("id"),
        proxy
            .get("metadata")
            .and_then(Value::as_object)
            .unwrap_or(&serde_json::Map::new()),
        locality,
        None,
    )
    .expect("node parses");
    let proxy = Proxy::resolve(Arc::new(node), &snap);
    (snap, proxy)
}

fn render(snap: &strait_model::MeshSnapshot, proxy: &Proxy) -> String {
    let r = strait_translate::generate(snap, proxy);
    let doc = json!({
        "clusters": r.clusters.iter().map(support::to_json).collect::<Vec<_>>(),
        "endpoints": r.endpoints.iter().map(support::to_json).collect::<Vec<_>>(),
        "listeners": r.listeners.iter().map(support::to_json).collect::<Vec<_>>(),
        "routes": r.routes.iter().map(support::to_json).collect::<Vec<_>>(),
        "secrets": r.secrets.iter().map(|s| {
            // Key material stays out of the golden files: name and kind are what matters.
            let mut v = support::to_json(s);
            for k in ["tls_certificate", "validation_context"] {
                if let Some(o) = v.get_mut(k).and_then(|x| x.as_object_mut()) {
                    for (_, val) in o.iter_mut() {
                        *val = json!("<redacted>");
                    }
                }
            }
            v
        }).collect::<Vec<_>>(),
    });
    serde_yaml_ng::to_string(&doc).expect("yaml")
}

#[test]
fn golden() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let refresh = std::env::var_os("REFRESH_GOLDEN").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("testdata")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("input.yaml").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for dir in cases {
        let (snap, proxy) = load_case(&dir);
        let got = render(&snap, &proxy);
        let expected_path = dir.join("expected.yaml");
        if refresh {
            std::fs::write(&expected_path, &got).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != got {
            let actual_path = dir.join("actual.yaml");
            std::fs::write(&actual_path, &got).expect("write actual");
            failures.push(format!(
                "{}: output differs from expected.yaml (see {}; REFRESH_GOLDEN=1 to accept)",
                dir.display(),
                actual_path.display()
            ));
        } else {
            let _ = std::fs::remove_file(dir.join("actual.yaml"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
