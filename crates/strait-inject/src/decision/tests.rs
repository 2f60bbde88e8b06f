use super::*;

fn mk_labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mk_pod(ns: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PodMeta {
    PodMeta {
        namespace: ns.to_string(),
        labels: mk_labels(labels),
        annotations: mk_labels(annotations),
        host_network: false,
    }
}

/// The rows of Istio's documented behaviour, one by one, with the reason users see.
#[test]
fn documented_rows() {
    let no_tags = BTreeMap::new();
    let default_to_canary = mk_labels(&[("default", "canary")]);
    let stable = mk_labels(&[("stable", "canary")]);
    struct Row<'a> {
        ns: &'a [(&'a str, &'a str)],
        labels: &'a [(&'a str, &'a str)],
        annotations: &'a [(&'a str, &'a str)],
        revision: &'a str,
        tags: &'a BTreeMap<String, String>,
        inject: bool,
        tag: Option<&'a str>,
        reason: &'a str,
    }
    let rows = [
        Row {
            ns: &[("istio-injection", "enabled")],
            labels: &[],
            annotations: &[],
            revision: "default",
            tags: &no_tags,
            inject: true,
            tag: None,
            reason: "namespace label istio-injection=enabled selects revision default",
        },
        Row {
            ns: &[("istio-injection", "disabled")],
            labels: &[("sidecar.istio.io/inject", "true")],
            annotations: &[],
            revision: "default",
            tags: &no_tags,
            inject: false,
            tag: None,
            reason: "namespace app is labelled istio-injection=disabled",
        },
        Row {
            ns: &[("istio-injection", "enabled")],
            labels: &[("sidecar.istio.io/inject", "false")],
            annotations: &[],
            revision: "default",
            tags: &no_tags,
            inject: false,
            tag: None,
            reason: "pod label sidecar.istio.io/inject=false refuses injection",
        },
        Row {
            ns: &[("istio-injection", "enabled")],
            labels: &[],
            annotations: &[("sidecar.istio.io/inject", "false")],
            revision: "default",
            tags: &no_tags,
            inject: false,
            tag: None,
            reason: "pod annotation sidecar.istio.io/inject=false refuses injection",
        },
        // The label beats the annotation.
        Row {
            ns: &[("istio-injection", "enabled")],
            labels: &[("sidecar.istio.io/inject", "true")],
            annotations: &[("sidecar.istio.io/inject", "false")],
            revision: "default",
            tags: &no_tags,
            inject: true,
            tag: None,
            reason: "selects revision default",
        },
        // The default tag owns istio-injection=enabled.
        Row {
            ns: &[("istio-injection", "enabled")],
            labels: &[],
            annotations: &[],
            revision: "canary",
            tags: &default_to_canary,
            inject: true,
            tag: Some("default"),
            reason: "selects tag default (revision canary)",
        },
        Row {
            ns: &[("istio-injection", "enabled")],
            labels: &[],
            annotations: &[],
            revision: "default",
            tags: &default_to_canary,
            inject: false,
            tag: Some("default"),
            reason: "selects tag default (revision canary), not revision default",
        },
        // istio-injection wins over istio.io/rev on the namespace and on the pod.
        Row {
            ns: &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
            labels: &[("istio.io/rev", "canary")],
            annotations: &[],
            revision: "canary",
            tags: &no_tags,
            inject: false,
            tag: None,
            reason: "selects revision default, not revision canary",
        },
        Row {
            ns: &[("istio-injection", "disabled"), ("istio.io/rev", "canary")],
            labels: &[],
            annotations: &[],
            revision: "canary",
            tags: &no_tags,
            inject: false,
            tag: None,
            reason: "labelled istio-injection=disabled",
        },
        // The namespace's revision wins over the pod's.
        Row {
            ns: &[("istio.io/rev", "canary")],
            labels: &[("istio.io/rev", "default")],
            annotations: &[],
            revision: "canary",
            tags: &no_tags,
            inject: true,
            tag: None,
            reason: "namespace label istio.io/rev=canary selects revision canary",
        },
        Row {
            ns: &[],
            labels: &[("istio.io/rev", "canary")],
            annotations: &[],
            revision: "canary",
            tags: &no_tags,
            inject: true,
            tag: None,
            reason: "pod label istio.io/rev=canary selects revision canary",
        },
        Row {
            ns: &[],
            labels: &[("istio.io/rev", "stable")],
            annotations: &[],
            revision: "canary",
            tags: &stable,
            inject: true,
            tag: Some("stable"),
            reason: "pod label istio.io/rev=stable selects tag stable (revision canary)",
        },
        Row {
            ns: &[("istio.io/rev", "stable")],
            labels: &[],
            annotations: &[("sidecar.istio.io/inject", "no")],
            revision: "canary",
            tags: &stable,
            inject: false,
            tag: Some("stable"),
            reason: "but pod annotation sidecar.istio.io/inject=no refuses injection",
        },
        // A pod asking for injection without a revision gets the default revision.
        Row {
            ns: &[],
            labels: &[("sidecar.istio.io/inject", "true")],
            annotations: &[],
            revision: "default",
            tags: &no_tags,
            inject: true,
            tag: None,
            reason: "pod label sidecar.istio.io/inject=true selects revision default",
        },
        // The legacy annotation alone does not select (the webhooks' selectors read labels).
        Row {
            ns: &[],
            labels: &[],
            annotations: &[("sidecar.istio.io/inject", "true")],
            revision: "default",
            tags: &no_tags,
            inject: false,
            tag: None,
            reason: "not selected",
        },
        Row {
            ns: &[],
            labels: &[],
            annotations: &[],
            revision: "default",
            tags: &no_tags,
            inject: false,
            tag: None,
            reason: "not selected",
        },
    ];
    for (i, r) in rows.iter().enumerate() {
        let pod = mk_pod("app", r.labels, r.annotations);
        let d = decide(&pod, &mk_labels(r.ns), r.revision, r.tags);
        assert_eq!(d.inject, r.inject, "row {i}: {d:?}");
        assert_eq!(d.tag.as_deref(), r.tag, "row {i}: {d:?}");
        assert!(
            d.reason.contains(r.reason),
            "row {i}: reason {:?} lacks {:?}",
            d.reason,
            r.reason
        );
    }
}

#[test]
fn never_injected() {
    let ns = mk_labels(&[("istio-injection", "enabled")]);
    let tags = BTreeMap::new();
    for system in IGNORED_NAMESPACES {
        let d = decide(&mk_pod(system, &[], &[]), &ns, "default", &tags);
        assert!(!d.inject && d.reason.contains(system), "{d:?}");
    }
    let mut host = mk_pod("app", &[("sidecar.istio.io/inject", "true")], &[]);
    host.host_network = true;
    let d = decide(&host, &ns, "default", &tags);
    assert!(!d.inject && d.reason.contains("host network"), "{d:?}");
    let done = mk_pod("app", &[], &[("sidecar.istio.io/status", "{}")]);
    let d = decide(&done, &ns, "default", &tags);
    assert!(!d.inject && d.reason.contains("already injected"), "{d:?}");
    // Offline injection honours the same exclusions and the pod's own refusal.
    assert!(!decide_offline(&done, "default", None).inject);
    assert!(!decide_offline(&host, "default", None).inject);
    let refuses = mk_pod("app", &[], &[("sidecar.istio.io/inject", "false")]);
    assert!(!decide_offline(&refuses, "default", None).inject);
    let plain = mk_pod("app", &[("istio.io/rev", "other")], &[]);
    let d = decide_offline(&plain, "canary", Some("stable"));
    assert!(d.inject, "{d:?}");
    assert_eq!(d.tag.as_deref(), Some("stable"));
    assert_eq!(d.revision.as_deref(), Some("canary"));
}

/// Istio's selection modelled the way the API server does it: the webhook configurations
/// Istio installs for each revision and tag, their label selectors evaluated against the
/// namespace and the pod, then the called webhook's policy. An independent model of the
/// same rules, to compare [`decide`] with over every combination.
mod oracle {
    use super::*;

    pub enum Op {
        In(&'static [&'static str]),
        NotIn(&'static [&'static str]),
        DoesNotExist,
    }

    pub struct Expr {
        key: &'static str,
        op: Op,
        values: Vec<String>,
    }

    fn expr(key: &'static str, op: Op) -> Expr {
        Expr {
            key,
            op,
            values: Vec::new(),
        }
    }

    fn in_values(key: &'static str, values: &[&str]) -> Expr {
        Expr {
            key,
            op: Op::In(&[]),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn matches(exprs: &[Expr], labels: &BTreeMap<String, String>) -> bool {
        exprs.iter().all(|e| {
            let v = labels.get(e.key);
            match &e.op {
                Op::In(fixed) => v.is_some_and(|v| {
                    fixed.contains(&v.as_str()) || e.values.iter().any(|x| x == v)
                }),
                Op::NotIn(fixed) => v.is_none_or(|v| !fixed.contains(&v.as_str())),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }

    pub struct Webhook {
        namespace: Vec<Expr>,
        object: Vec<Expr>,
        revision: String,
        tag: Option<String>,
    }

    fn pair(value: &str, revision: &str, tag: Option<&str>) -> Vec<Webhook> {
        let target = |namespace, object| Webhook {
            namespace,
            object,
            revision: revision.to_string(),
            tag: tag.map(str::to_string),
        };
        vec![
            // rev.namespace.sidecar-injector
            target(
                vec![
                    in_values("istio.io/rev", &[value]),
                    expr("istio-injection", Op::DoesNotExist),
                ],
                vec![expr("sidecar.istio.io/inject", Op::NotIn(&["false"]))],
            ),
            // rev.object.sidecar-injector
            target(
                vec![
                    expr("istio.io/rev", Op::DoesNotExist),
                    expr("istio-injection", Op::DoesNotExist),
                ],
                vec![
                    expr("sidecar.istio.io/inject", Op::NotIn(&["false"])),
                    in_values("istio.io/rev", &[value]),
                ],
            ),
        ]
    }

    fn generic(revision: &str, tag: Option<&str>) -> Vec<Webhook> {
        let target = |namespace, object| Webhook {
            namespace,
            object,
            revision: revision.to_string(),
            tag: tag.map(str::to_string),
        };
        vec![
            // namespace.sidecar-injector
            target(
                vec![expr("istio-injection", Op::In(&["enabled"]))],
                vec![expr("sidecar.istio.io/inject", Op::NotIn(&["false"]))],
            ),
            // object.sidecar-injector
            target(
                vec![
                    expr("istio-injection", Op::DoesNotExist),
                    expr("istio.io/rev", Op::DoesNotExist),
                ],
                vec![
                    expr("sidecar.istio.io/inject", Op::In(&["true"])),
                    expr("istio.io/rev", Op::DoesNotExist),
                ],
            ),
        ]
    }

    /// Every webhook of a cluster running `revisions` with `tags`. A tag shadows a revision
    /// of the same name (Istio refuses such tags; strait lets the tag win).
    pub fn webhooks(revisions: &[&str], tags: &BTreeMap<String, String>) -> Vec<Webhook> {
        let mut out = Vec::new();
        for rev in revisions {
            if tags.contains_key(*rev) {
                continue;
            }
            out.extend(pair(rev, rev, None));
            if *rev == "default" && !tags.contains_key("default") {
                out.extend(generic(rev, None));
            }
        }
        for (tag, rev) in tags {
            out.extend(pair(tag, rev, Some(tag)));
            if tag == "default" {
                out.extend(generic(rev, Some(tag)));
            }
        }
        out
    }

    /// What the API server and the called webhook do: `(injected, tag)`.
    pub fn outcome(
        hooks: &[Webhook],
        pod: &PodMeta,
        ns: &BTreeMap<String, String>,
        revision: &str,
    ) -> (bool, Option<String>) {
        let called: Vec<&Webhook> = hooks
            .iter()
            .filter(|w| matches(&w.namespace, ns) && matches(&w.object, &pod.labels))
            .collect();
        let mut targets: Vec<(&str, Option<&str>)> = called
            .iter()
            .map(|w| (w.revision.as_str(), w.tag.as_deref()))
            .collect();
        targets.dedup();
        assert!(
            targets.len() <= 1,
            "ambiguous selection {targets:?} for {pod:?} in {ns:?}"
        );
        let Some((rev, tag)) = targets.first() else {
            return (false, None);
        };
        if pod.host_network
            || IGNORED_NAMESPACES.contains(&pod.namespace.as_str())
            || pod.annotations.contains_key("sidecar.istio.io/status")
        {
            return (false, tag.map(str::to_string));
        }
        let explicit = pod
            .labels
            .get("sidecar.istio.io/inject")
            .or_else(|| pod.annotations.get("sidecar.istio.io/inject"));
        let policy = match explicit.map(|v| v.to_lowercase()) {
            None => true,
            Some(v) => matches!(v.as_str(), "" | "y" | "yes" | "true" | "on"),
        };
        (*rev == revision && policy, tag.map(str::to_string))
    }
}

#[test]
fn matrix_agrees_with_istio_webhook_selectors() {
    let revisions = ["default", "r1", "r2"];
    let tag_maps = [
        mk_labels(&[]),
        mk_labels(&[("default", "r1")]),
        mk_labels(&[("stable", "r1")]),
        mk_labels(&[("default", "r2"), ("stable", "r1"), ("canary", "r2")]),
        mk_labels(&[("default", "default"), ("canary", "r1")]),
    ];
    let injection = [None, Some("enabled"), Some("disabled")];
    let revs = [
        None,
        Some("default"),
        Some("r1"),
        Some("r2"),
        Some("stable"),
        Some("canary"),
        Some("ghost"),
    ];
    let inject_label = [None, Some("true"), Some("false"), Some("yes"), Some("")];
    let inject_annotation = [None, Some("true"), Some("false"), Some("off")];
    let namespaces = ["app", "kube-system"];
    let mut cases = 0;
    let mut injected = 0;
    for tags in &tag_maps {
        let hooks = oracle::webhooks(&revisions, tags);
        for ns_injection in injection {
            for ns_rev in revs {
                let mut ns = BTreeMap::new();
                if let Some(v) = ns_injection {
                    ns.insert("istio-injection".to_string(), v.to_string());
                }
                if let Some(v) = ns_rev {
                    ns.insert("istio.io/rev".to_string(), v.to_string());
                }
                for pod_rev in revs {
                    for label in inject_label {
                        for annotation in inject_annotation {
                            for (namespace, host_network, injected_already) in [
                                (namespaces[0], false, false),
                                (namespaces[1], false, false),
                                (namespaces[0], true, false),
                                (namespaces[0], false, true),
                            ] {
                                let mut pod = mk_pod(namespace, &[], &[]);
                                pod.host_network = host_network;
                                if injected_already {
                                    pod.annotations
                                        .insert("sidecar.istio.io/status".into(), "{}".into());
                                }
                                if let Some(v) = pod_rev {
                                    pod.labels.insert("istio.io/rev".into(), v.into());
                                }
                                if let Some(v) = label {
                                    pod.labels
                                        .insert("sidecar.istio.io/inject".into(), v.into());
                                }
                                if let Some(v) = annotation {
                                    pod.annotations
                                        .insert("sidecar.istio.io/inject".into(), v.into());
                                }
                                for this in revisions {
                                    cases += 1;
                                    let want = oracle::outcome(&hooks, &pod, &ns, this);
                                    let got = decide(&pod, &ns, this, tags);
                                    assert_eq!(
                                        got.inject, want.0,
                                        "revision {this}, tags {tags:?}, namespace {ns:?}, \
                                         pod {pod:?}: {got:?}"
                                    );
                                    if got.inject {
                                        injected += 1;
                                        assert_eq!(got.tag, want.1, "{pod:?} {ns:?} {tags:?}");
                                        assert_eq!(got.revision.as_deref(), Some(this));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // Every pod the oracle injects is injected by exactly one revision: checked above for
    // each; the totals guard against a matrix that never injects.
    assert!(cases > 50_000, "{cases}");
    assert!(injected > 1_000, "{injected}");
}

#[test]
fn exactly_one_revision_injects_a_selected_pod() {
    let revisions = ["default", "r1", "r2"];
    let tags = mk_labels(&[("default", "r2"), ("stable", "r1")]);
    for ns_rev in [None, Some("stable"), Some("default"), Some("r1")] {
        for pod_rev in [None, Some("stable"), Some("r2")] {
            let mut ns = BTreeMap::new();
            if let Some(v) = ns_rev {
                ns.insert("istio.io/rev".to_string(), v.to_string());
            }
            let mut pod = mk_pod("app", &[("sidecar.istio.io/inject", "true")], &[]);
            if let Some(v) = pod_rev {
                pod.labels.insert("istio.io/rev".into(), v.into());
            }
            let n = revisions
                .iter()
                .filter(|r| decide(&pod, &ns, r, &tags).inject)
                .count();
            assert_eq!(n, 1, "{ns:?} {pod:?}");
        }
    }
}

#[test]
fn pod_meta_from_objects() {
    let pod = serde_json::json!({
        "metadata": {"labels": {"app": "web", "n": 1}, "annotations": {"a": "b"}},
        "spec": {"hostNetwork": true, "containers": []}
    });
    let m = PodMeta::from_pod(&pod, "shop");
    assert_eq!(m.namespace, "shop");
    assert_eq!(m.labels["n"], "1");
    assert!(m.host_network);
    let named = serde_json::json!({"metadata": {"namespace": "other"}});
    assert_eq!(PodMeta::from_pod(&named, "shop").namespace, "other");
}
