//! `strait tag`: revision tags, stable names (`prod`, `default`) that point at a control-plane
//! revision.
//!
//! A tag is two objects. The MutatingWebhookConfiguration `istio-revision-tag-<TAG>` sends the
//! pods of namespaces labelled `istio.io/rev=<TAG>` (and pods labelled so) to the injector of
//! the revision it points at (the Service `strait-<REV>`, path `/inject`); the `default` tag
//! also owns `istio-injection=enabled` and `sidecar.istio.io/inject=true`. The Service
//! `strait-tag-<TAG>` in the system namespace selects that revision's control-plane pods:
//! sidecars injected through the tag are bootstrapped against it, so moving the tag moves
//! where they reconnect, without restarting them. Pods injected for a revision directly stay
//! on it.
//!
//! The Kubernetes work is in [`set`], [`list`] and [`remove`], which take a client (tests give
//! them one for the in-process fake API server); [`run`] is the command line around them.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use strait_api::k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use strait_api::k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServicePort, ServiceSpec};
use strait_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use strait_api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use strait_sources::kube::KubeCluster;
use tracing::info;

pub use strait_api::labels::{
    ISTIO_INJECTION as INJECTION_LABEL, ISTIO_REV as REV_LABEL, ISTIO_TAG as TAG_LABEL,
    SIDECAR_INJECT as INJECT_LABEL, STRAIT_REV as POD_REV_LABEL, STRAIT_TAG as POD_TAG_LABEL,
    tag_service_name,
};
/// The revision (and tag) that owns `istio-injection=enabled`.
pub const DEFAULT: &str = "default";
/// The xDS port of the control plane and of tag Services.
pub const XDS_PORT: i32 = 15010;

/// Name of the MutatingWebhookConfiguration of revision `rev` (the Helm chart's).
pub fn revision_webhook_name(rev: &str) -> String {
    format!("strait-sidecar-injector-{rev}")
}

/// Name of the Service of revision `rev` (xDS, webhook and status ports).
pub fn revision_service_name(rev: &str) -> String {
    format!("strait-{rev}")
}

/// Name of the MutatingWebhookConfiguration of tag `tag` (Istio's name).
pub fn tag_webhook_name(tag: &str) -> String {
    format!("istio-revision-tag-{tag}")
}

/// Why a tag command refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    /// The name is not a valid label value / object name part.
    #[error("invalid {what} name {name:?}: use lowercase letters, digits and '-' (at most 40)")]
    InvalidName {
        /// `tag` or `revision`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// The target revision has no injector webhook.
    #[error(
        "revision {revision:?} has no injector: MutatingWebhookConfiguration {webhook:?} not \
         found (install the revision first, e.g. helm install --set revision={revision})"
    )]
    NoSuchRevision {
        /// The revision asked for.
        revision: String,
        /// The webhook looked for.
        webhook: String,
    },
    /// The tag would shadow a revision of the same name.
    #[error(
        "tag {tag:?} has the name of an installed revision (MutatingWebhookConfiguration \
         {webhook:?}); choose another tag name"
    )]
    NameIsRevision {
        /// The tag.
        tag: String,
        /// The revision's webhook.
        webhook: String,
    },
    /// The tag exists and points elsewhere.
    #[error(
        "tag {tag:?} already points to revision {current:?}; pass --overwrite to move it to \
         {requested:?}"
    )]
    Exists {
        /// The tag.
        tag: String,
        /// Where it points now.
        current: String,
        /// Where it was asked to point.
        requested: String,
    },
    /// No such tag.
    #[error("tag {tag:?} not found (no MutatingWebhookConfiguration {webhook:?})")]
    NotFound {
        /// The tag.
        tag: String,
        /// The webhook looked for.
        webhook: String,
    },
    /// The tag is still used.
    #[error(
        "tag {tag:?} is still in use by namespaces [{}] and {pods} pod(s) injected through it; \
         relabel them first, or pass --force",
        namespaces.join(", ")
    )]
    InUse {
        /// The tag.
        tag: String,
        /// Namespaces that select it.
        namespaces: Vec<String>,
        /// Pods injected through it (their proxies connect through the tag's Service).
        pods: usize,
    },
    /// A request to the API server failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// `Result` of the tag commands.
pub type Result<T, E = TagError> = std::result::Result<T, E>;

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> TagError {
    let action = action.into();
    move |source| TagError::Api { action, source }
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TagError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_string(),
        operator: operator.to_string(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn selector(reqs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(reqs),
        match_labels: None,
    }
}

/// The webhooks' names, by which their selectors are known.
const REV_NAMESPACE: &str = "rev.namespace.sidecar-injector.istio.io";
const REV_OBJECT: &str = "rev.object.sidecar-injector.istio.io";
const NAMESPACE: &str = "namespace.sidecar-injector.istio.io";
const OBJECT: &str = "object.sidecar-injector.istio.io";

/// The namespace and object selectors of webhook `name` for revision or tag `rev`, as Istio
/// splits them: a namespace selecting `rev`; a pod selecting `rev` in a namespace that selects
/// nothing; and for `default`, a namespace with `istio-injection=enabled`, or a pod with
/// `sidecar.istio.io/inject=true` in a namespace that selects nothing. A pod labelled
/// `sidecar.istio.io/inject=false` is never sent. `None` for a name it does not know.
pub fn selectors(name: &str, rev: &str) -> Option<(LabelSelector, LabelSelector)> {
    let not_disabled = || requirement(INJECT_LABEL, "NotIn", &["false"]);
    let unlabelled_ns = || {
        vec![
            requirement(REV_LABEL, "DoesNotExist", &[]),
            requirement(INJECTION_LABEL, "DoesNotExist", &[]),
        ]
    };
    Some(match name {
        REV_NAMESPACE => (
            selector(vec![
                requirement(REV_LABEL, "In", &[rev]),
                requirement(INJECTION_LABEL, "DoesNotExist", &[]),
            ]),
            selector(vec![not_disabled()]),
        ),
        REV_OBJECT => (
            selector(unlabelled_ns()),
            selector(vec![not_disabled(), requirement(REV_LABEL, "In", &[rev])]),
        ),
        NAMESPACE if rev == DEFAULT => (
            selector(vec![requirement(INJECTION_LABEL, "In", &["enabled"])]),
            selector(vec![not_disabled()]),
        ),
        OBJECT if rev == DEFAULT => (
            selector(unlabelled_ns()),
            selector(vec![
                requirement(INJECT_LABEL, "In", &["true"]),
                requirement(REV_LABEL, "DoesNotExist", &[]),
            ]),
        ),
        _ => return None,
    })
}

/// The names of the webhooks a revision or tag named `name` has.
pub fn webhook_names(name: &str) -> Vec<&'static str> {
    if name == DEFAULT {
        vec![REV_NAMESPACE, REV_OBJECT, NAMESPACE, OBJECT]
    } else {
        vec![REV_NAMESPACE, REV_OBJECT]
    }
}

/// A selector no object matches: how a webhook is switched off without deleting it.
fn never_match() -> LabelSelector {
    selector(vec![requirement(
        "istio.io/deactivated",
        "In",
        &["never-match"],
    )])
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The tag's webhook configuration: its webhooks copy the revision's settings (client config
/// with its caBundle, failure and reinvocation policies, timeout) and select the tag.
pub fn tag_webhook(
    tag: &str,
    revision: &str,
    system_namespace: &str,
    revision_webhook: &MutatingWebhookConfiguration,
) -> MutatingWebhookConfiguration {
    let template = revision_webhook
        .webhooks
        .as_ref()
        .and_then(|w| w.first())
        .cloned();
    let ca_bundle = template
        .as_ref()
        .and_then(|w| w.client_config.ca_bundle.clone())
        .filter(|b| !b.0.is_empty());
    let webhooks = webhook_names(tag)
        .into_iter()
        .filter_map(|name| {
            let (ns, obj) = selectors(name, tag)?;
            let t = template.clone();
            Some(MutatingWebhook {
                name: name.to_string(),
                admission_review_versions: vec!["v1".to_string()],
                client_config: WebhookClientConfig {
                    ca_bundle: ca_bundle.clone(),
                    service: Some(ServiceReference {
                        name: revision_service_name(revision),
                        namespace: system_namespace.to_string(),
                        path: Some("/inject".to_string()),
                        port: Some(443),
                    }),
                    url: None,
                },
                failure_policy: Some(
                    t.as_ref()
                        .and_then(|t| t.failure_policy.clone())
                        .unwrap_or_else(|| "Fail".to_string()),
                ),
                reinvocation_policy: Some(
                    t.as_ref()
                        .and_then(|t| t.reinvocation_policy.clone())
                        .unwrap_or_else(|| "Never".to_string()),
                ),
                timeout_seconds: t.as_ref().and_then(|t| t.timeout_seconds),
                side_effects: "None".to_string(),
                match_policy: None,
                match_conditions: None,
                namespace_selector: Some(ns),
                object_selector: Some(obj),
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".to_string()]),
                    operations: Some(vec!["CREATE".to_string()]),
                    resources: Some(vec!["pods".to_string()]),
                    scope: None,
                }]),
            })
        })
        .collect();
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(tag_webhook_name(tag)),
            labels: Some(labels(&[
                ("app", "strait"),
                (TAG_LABEL, tag),
                (REV_LABEL, revision),
                ("app.kubernetes.io/managed-by", "strait"),
            ])),
            ..ObjectMeta::default()
        },
        webhooks: Some(webhooks),
    }
}

/// The tag's Service: the xDS port of the revision's control-plane pods.
pub fn tag_service(tag: &str, revision: &str, system_namespace: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(tag_service_name(tag)),
            namespace: Some(system_namespace.to_string()),
            labels: Some(labels(&[
                ("app", "strait"),
                (TAG_LABEL, tag),
                (REV_LABEL, revision),
                ("app.kubernetes.io/managed-by", "strait"),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels(&[("app", "strait"), (POD_REV_LABEL, revision)])),
            ports: Some(vec![ServicePort {
                name: Some("grpc-xds".to_string()),
                port: XDS_PORT,
                target_port: Some(IntOrString::Int(XDS_PORT)),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Options of [`set`].
#[derive(Debug, Clone)]
pub struct SetOptions {
    /// The tag.
    pub tag: String,
    /// The revision it should point to.
    pub revision: String,
    /// Move the tag if it points elsewhere.
    pub overwrite: bool,
    /// Where the control plane's Services live.
    pub system_namespace: String,
}

/// What [`set`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    /// The tag did not exist.
    Created,
    /// The tag already pointed to this revision; its objects were refreshed.
    Unchanged,
    /// The tag moved from this revision.
    Moved {
        /// Where it pointed before.
        from: String,
    },
}

/// The revisions installed: the revision label of every strait injector webhook that is not
/// a tag's.
async fn revisions(client: &kube::Client) -> Result<BTreeSet<String>> {
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let list = mwcs
        .list(&ListParams::default().labels(&format!("app=strait,!{TAG_LABEL}")))
        .await
        .map_err(api_err("list MutatingWebhookConfigurations"))?;
    Ok(list
        .items
        .iter()
        .filter_map(|m| label(&m.metadata, REV_LABEL).map(str::to_string))
        .collect())
}

/// Switches the `default` revision's webhooks off (the `default` tag owns its selectors
/// now) or back on, keeping the configuration itself so that strait keeps its caBundle
/// current. Nothing to do without a `default` revision.
async fn set_default_revision_active(client: &kube::Client, active: bool) -> Result<()> {
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = revision_webhook_name(DEFAULT);
    let Some(mut mwc) = mwcs
        .get_opt(&name)
        .await
        .map_err(api_err(format!("get MutatingWebhookConfiguration {name}")))?
    else {
        return Ok(());
    };
    for wh in mwc.webhooks.iter_mut().flatten() {
        let (ns, obj) = if active {
            match selectors(&wh.name, DEFAULT) {
                Some(s) => s,
                None => continue,
            }
        } else {
            (never_match(), never_match())
        };
        wh.namespace_selector = Some(ns);
        wh.object_selector = Some(obj);
    }
    mwcs.replace(&name, &PostParams::default(), &mwc)
        .await
        .map_err(api_err(format!(
            "update MutatingWebhookConfiguration {name}"
        )))?;
    info!(
        webhook = %name,
        active,
        "default revision's injector webhooks switched"
    );
    Ok(())
}

/// Points `opts.tag` at `opts.revision`: creates or moves the tag's webhook configuration
/// and Service.
pub async fn set(client: &kube::Client, opts: &SetOptions) -> Result<SetOutcome> {
    check_name("tag", &opts.tag)?;
    check_name("revision", &opts.revision)?;
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let rev_name = revision_webhook_name(&opts.revision);
    let rev_webhook = mwcs
        .get_opt(&rev_name)
        .await
        .map_err(api_err(format!(
            "get MutatingWebhookConfiguration {rev_name}"
        )))?
        .ok_or_else(|| TagError::NoSuchRevision {
            revision: opts.revision.clone(),
            webhook: rev_name.clone(),
        })?;
    // The `default` tag may share its name with the `default` revision: it takes over that
    // revision's selectors (as Istio's does).
    if opts.tag != DEFAULT && revisions(client).await?.contains(&opts.tag) {
        return Err(TagError::NameIsRevision {
            tag: opts.tag.clone(),
            webhook: revision_webhook_name(&opts.tag),
        });
    }
    let tag_name = tag_webhook_name(&opts.tag);
    let existing = mwcs.get_opt(&tag_name).await.map_err(api_err(format!(
        "get MutatingWebhookConfiguration {tag_name}"
    )))?;
    let current = existing
        .as_ref()
        .and_then(|m| label(&m.metadata, REV_LABEL))
        .map(str::to_string);
    let outcome = match &current {
        None => SetOutcome::Created,
        Some(c) if *c == opts.revision => SetOutcome::Unchanged,
        Some(c) if !opts.overwrite => {
            return Err(TagError::Exists {
                tag: opts.tag.clone(),
                current: c.clone(),
                requested: opts.revision.clone(),
            });
        }
        Some(c) => SetOutcome::Moved { from: c.clone() },
    };

    // The Service first: once the webhook sends new pods to the revision, the address they
    // are bootstrapped against already leads there too.
    let services: Api<Service> = Api::namespaced(client.clone(), &opts.system_namespace);
    let svc_name = tag_service_name(&opts.tag);
    let svc = tag_service(&opts.tag, &opts.revision, &opts.system_namespace);
    let svc_exists = services
        .get_opt(&svc_name)
        .await
        .map_err(api_err(format!("get Service {svc_name}")))?
        .is_some();
    if svc_exists {
        // A merge patch keeps what the API server assigned (cluster IP) and only moves the
        // selector and labels.
        let patch = json!({
            "metadata": {"labels": svc.metadata.labels},
            "spec": {"selector": svc.spec.as_ref().and_then(|s| s.selector.clone()),
                     "ports": svc.spec.as_ref().and_then(|s| s.ports.clone())},
        });
        services
            .patch(&svc_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("update Service {svc_name}")))?;
    } else {
        services
            .create(&PostParams::default(), &svc)
            .await
            .map_err(api_err(format!("create Service {svc_name}")))?;
    }

    let mut webhook = tag_webhook(
        &opts.tag,
        &opts.revision,
        &opts.system_namespace,
        &rev_webhook,
    );
    match existing {
        Some(old) => {
            webhook.metadata.resource_version = old.metadata.resource_version;
            mwcs.replace(&tag_name, &PostParams::default(), &webhook)
                .await
                .map_err(api_err(format!(
                    "update MutatingWebhookConfiguration {tag_name}"
                )))?;
        }
        None => {
            mwcs.create(&PostParams::default(), &webhook)
                .await
                .map_err(api_err(format!(
                    "create MutatingWebhookConfiguration {tag_name}"
                )))?;
        }
    }
    if opts.tag == DEFAULT {
        set_default_revision_active(client, false).await?;
    }
    info!(tag = %opts.tag, revision = %opts.revision, ?outcome, "tag set");
    Ok(outcome)
}

/// One tag in [`TagReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    /// The tag.
    pub tag: String,
    /// The revision it points to.
    pub revision: String,
    /// Namespaces whose pods it injects.
    pub namespaces: Vec<String>,
    /// Pods injected through it.
    pub pods: usize,
}

/// One revision in [`TagReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionRow {
    /// The revision.
    pub revision: String,
    /// Tags pointing to it.
    pub tags: Vec<String>,
    /// Pods whose proxies it serves: pinned to it, or injected through one of its tags.
    pub pods: usize,
    /// Of those, pods injected for this revision directly.
    pub pinned: usize,
}

/// What `strait tag list` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagReport {
    /// Every tag, by name.
    pub tags: Vec<TagRow>,
    /// Every revision installed, pointed to or running pods, by name.
    pub revisions: Vec<RevisionRow>,
}

fn namespaces_of(tag: &str, namespaces: &[Namespace]) -> Vec<String> {
    namespaces
        .iter()
        .filter(|n| {
            label(&n.metadata, REV_LABEL) == Some(tag)
                || (tag == DEFAULT
                    && label(&n.metadata, INJECTION_LABEL) == Some("enabled")
                    && label(&n.metadata, REV_LABEL).is_none())
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

async fn all_namespaces(client: &kube::Client) -> Result<Vec<Namespace>> {
    let api: Api<Namespace> = Api::all(client.clone());
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(api_err("list Namespaces"))?
        .items)
}

async fn injected_pods(client: &kube::Client) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::all(client.clone());
    Ok(api
        // The control plane's own pods carry the revision label too; they run no proxy.
        .list(&ListParams::default().labels(&format!("{POD_REV_LABEL},app!=strait")))
        .await
        .map_err(api_err("list Pods"))?
        .items)
}

/// Gathers the tags, the namespaces each serves and the pods on each revision.
pub async fn list(client: &kube::Client) -> Result<TagReport> {
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let tag_webhooks = mwcs
        .list(&ListParams::default().labels(TAG_LABEL))
        .await
        .map_err(api_err("list MutatingWebhookConfigurations"))?;
    let namespaces = all_namespaces(client).await?;
    let pods = injected_pods(client).await?;

    let mut tag_of: BTreeMap<String, String> = BTreeMap::new();
    for m in &tag_webhooks.items {
        if let (Some(t), Some(r)) = (label(&m.metadata, TAG_LABEL), label(&m.metadata, REV_LABEL)) {
            tag_of.insert(t.to_string(), r.to_string());
        }
    }
    let mut by_tag: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pinned: BTreeMap<String, usize> = BTreeMap::new();
    let mut serving: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        let rev = label(&p.metadata, POD_REV_LABEL).unwrap_or_default();
        match label(&p.metadata, POD_TAG_LABEL).filter(|t| !t.is_empty()) {
            // A proxy injected through a tag follows it: it is on the tag's revision now.
            Some(t) => {
                *by_tag.entry(t).or_default() += 1;
                let on = tag_of.get(t).map(String::as_str).unwrap_or(rev);
                *serving.entry(on.to_string()).or_default() += 1;
            }
            None => {
                *pinned.entry(rev.to_string()).or_default() += 1;
                *serving.entry(rev.to_string()).or_default() += 1;
            }
        }
    }
    let tags = tag_of
        .iter()
        .map(|(t, r)| TagRow {
            tag: t.clone(),
            revision: r.clone(),
            namespaces: namespaces_of(t, &namespaces),
            pods: by_tag.get(t.as_str()).copied().unwrap_or_default(),
        })
        .collect();
    let mut names = revisions(client).await?;
    names.extend(tag_of.values().cloned());
    names.extend(serving.keys().cloned());
    let revisions = names
        .into_iter()
        .map(|r| RevisionRow {
            tags: tag_of
                .iter()
                .filter(|(_, to)| **to == r)
                .map(|(t, _)| t.clone())
                .collect(),
            pods: serving.get(&r).copied().unwrap_or_default(),
            pinned: pinned.get(&r).copied().unwrap_or_default(),
            revision: r,
        })
        .collect();
    Ok(TagReport { tags, revisions })
}

fn join_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

impl TagReport {
    /// The tables `strait tag list` prints: tags, then revisions.
    pub fn render(&self) -> String {
        let mut tags = vec![vec![
            "TAG".to_string(),
            "REVISION".to_string(),
            "NAMESPACES".to_string(),
            "PODS".to_string(),
        ]];
        tags.extend(self.tags.iter().map(|t| {
            vec![
                t.tag.clone(),
                t.revision.clone(),
                join_or_dash(&t.namespaces),
                t.pods.to_string(),
            ]
        }));
        let mut revs = vec![vec![
            "REVISION".to_string(),
            "TAGS".to_string(),
            "PODS".to_string(),
            "PINNED".to_string(),
        ]];
        revs.extend(self.revisions.iter().map(|r| {
            vec![
                r.revision.clone(),
                join_or_dash(&r.tags),
                r.pods.to_string(),
                r.pinned.to_string(),
            ]
        }));
        format!(
            "{}\n{}",
            crate::table::render(&tags),
            crate::table::render(&revs)
        )
    }
}

/// What [`remove`] deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The revision the tag pointed to.
    pub revision: String,
    /// Namespaces that still selected it (only with `force`).
    pub namespaces: Vec<String>,
    /// Pods injected through it (only with `force`): their proxies lose the address they
    /// connect to and keep their last configuration until restarted.
    pub pods: usize,
}

/// Deletes the tag's webhook configuration and Service; refuses while namespaces or pods
/// still use it unless `force`.
pub async fn remove(
    client: &kube::Client,
    tag: &str,
    force: bool,
    system_namespace: &str,
) -> Result<Removed> {
    check_name("tag", tag)?;
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = tag_webhook_name(tag);
    let webhook = mwcs
        .get_opt(&name)
        .await
        .map_err(api_err(format!("get MutatingWebhookConfiguration {name}")))?
        .ok_or_else(|| TagError::NotFound {
            tag: tag.to_string(),
            webhook: name.clone(),
        })?;
    let revision = label(&webhook.metadata, REV_LABEL)
        .unwrap_or_default()
        .to_string();
    let namespaces = namespaces_of(tag, &all_namespaces(client).await?);
    let pods = injected_pods(client)
        .await?
        .iter()
        .filter(|p| label(&p.metadata, POD_TAG_LABEL) == Some(tag))
        .count();
    if (!namespaces.is_empty() || pods > 0) && !force {
        return Err(TagError::InUse {
            tag: tag.to_string(),
            namespaces,
            pods,
        });
    }
    mwcs.delete(&name, &DeleteParams::default())
        .await
        .map_err(api_err(format!(
            "delete MutatingWebhookConfiguration {name}"
        )))?;
    let services: Api<Service> = Api::namespaced(client.clone(), system_namespace);
    let svc = tag_service_name(tag);
    match services.delete(&svc, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(api_err(format!("delete Service {svc}"))(e)),
    }
    if tag == DEFAULT {
        set_default_revision_active(client, true).await?;
    }
    info!(%tag, %revision, force, "tag removed");
    Ok(Removed {
        revision,
        namespaces,
        pods,
    })
}

/// Options of `strait tag`.
#[derive(Args)]
pub struct TagArgs {
    #[command(subcommand)]
    command: TagCommand,
}

/// Where the cluster is.
#[derive(Args)]
pub(crate) struct ClusterArgs {
    /// The cluster's kubeconfig (`PATH` or `PATH#CONTEXT`); by default `$KUBECONFIG`,
    /// `~/.kube/config`, or the pod's service account.
    #[arg(long, value_name = "PATH[#CONTEXT]", env = "STRAIT_KUBECONFIG")]
    pub(crate) kubeconfig: Option<String>,
    /// The control plane's namespace (revision and tag Services).
    #[arg(long, default_value = "istio-system")]
    pub(crate) system_namespace: String,
}

impl ClusterArgs {
    pub(crate) async fn client(&self) -> anyhow::Result<kube::Client> {
        let cluster = match &self.kubeconfig {
            Some(k) => KubeCluster::from_args(
                false,
                std::slice::from_ref(k),
                strait_sources::kube::DEFAULT_CLUSTER_ID,
            )?
            .into_iter()
            .next(),
            None => None,
        };
        Ok(strait_sources::kube::client(cluster.as_ref()).await?)
    }
}

#[derive(Subcommand)]
enum TagCommand {
    /// Create a tag, or move it to another revision.
    Set {
        /// The tag (`default` also owns `istio-injection=enabled`).
        tag: String,
        /// The revision it points to.
        #[arg(long)]
        revision: String,
        /// Move the tag if it already points to another revision.
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show tags, the namespaces they serve and the pods on each revision.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Delete a tag.
    Remove {
        /// The tag.
        tag: String,
        /// Delete it even while namespaces or pods still use it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Runs `strait tag …`.
pub fn run(args: TagArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            TagCommand::Set {
                tag,
                revision,
                overwrite,
                cluster,
            } => {
                let client = cluster.client().await?;
                let opts = SetOptions {
                    tag: tag.clone(),
                    revision: revision.clone(),
                    overwrite,
                    system_namespace: cluster.system_namespace.clone(),
                };
                let outcome = set(&client, &opts).await?;
                let svc = tag_service_name(&tag);
                match outcome {
                    SetOutcome::Created => println!(
                        "tag {tag} created: it points to revision {revision}; proxies injected \
                         through it connect to Service {svc}"
                    ),
                    SetOutcome::Unchanged => {
                        println!("tag {tag} already points to revision {revision}")
                    }
                    SetOutcome::Moved { from } => println!(
                        "tag {tag} moved from revision {from} to {revision}: new pods are \
                         injected by {revision}, and running proxies injected through {tag} \
                         reconnect to it through Service {svc} as {from} hands them over"
                    ),
                }
            }
            TagCommand::List { cluster } => {
                let client = cluster.client().await?;
                print!("{}", list(&client).await?.render());
            }
            TagCommand::Remove {
                tag,
                force,
                cluster,
            } => {
                let client = cluster.client().await?;
                let removed = remove(&client, &tag, force, &cluster.system_namespace).await?;
                println!("tag {tag} (revision {}) removed", removed.revision);
                if removed.pods > 0 {
                    println!(
                        "{} pod(s) were injected through {tag}: their proxies keep their last \
                         configuration but get no updates until they are restarted",
                        removed.pods
                    );
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use strait_sources::kube::fake::FakeApiServer;
    use strait_sources::kube::{KubeCluster, KubeConnect};

    use super::*;

    const NS: &str = "istio-system";
    const MWC: &str = "admissionregistration.k8s.io/v1";

    async fn client(fake: &FakeApiServer) -> kube::Client {
        let cluster = KubeCluster {
            id: "fake".into(),
            connect: KubeConnect::Url(fake.url()),
        };
        strait_sources::kube::client(Some(&cluster))
            .await
            .expect("client")
    }

    /// A revision's injector webhook configuration, as the Helm chart renders it (with the
    /// caBundle strait patched in).
    fn mk_revision(fake: &FakeApiServer, rev: &str) {
        let webhooks: Vec<Value> = webhook_names(rev)
            .into_iter()
            .map(|name| {
                let (ns, obj) = selectors(name, rev).expect("known webhook");
                json!({
                    "name": name,
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "service": {"name": format!("strait-{rev}"), "namespace": NS, "path": "/inject", "port": 443},
                        "caBundle": "Q0EtYnVuZGxl",
                    },
                    "failurePolicy": "Fail",
                    "reinvocationPolicy": "IfNeeded",
                    "sideEffects": "None",
                    "namespaceSelector": ns,
                    "objectSelector": obj,
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                })
            })
            .collect();
        fake.apply(json!({
            "apiVersion": MWC, "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": format!("strait-sidecar-injector-{rev}"), "labels": {"app": "strait", "istio.io/rev": rev}},
            "webhooks": webhooks,
        }));
    }

    fn mk_namespace(fake: &FakeApiServer, name: &str, labels: Value) {
        fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
    }

    fn mk_pod(fake: &FakeApiServer, ns: &str, name: &str, rev: &str, tag: Option<&str>) {
        let mut labels = json!({"app": name, "strait.io/rev": rev});
        if let Some(t) = tag {
            labels["strait.io/tag"] = json!(t);
        }
        fake.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "app"}]},
        }));
    }

    fn opts(tag: &str, revision: &str, overwrite: bool) -> SetOptions {
        SetOptions {
            tag: tag.into(),
            revision: revision.into(),
            overwrite,
            system_namespace: NS.into(),
        }
    }

    fn tag_webhook_of(fake: &FakeApiServer, tag: &str) -> MutatingWebhookConfiguration {
        let v = fake
            .get(
                MWC,
                "MutatingWebhookConfiguration",
                "",
                &tag_webhook_name(tag),
            )
            .unwrap_or_else(|| panic!("no webhook for tag {tag}"));
        serde_json::from_value(v).expect("a MutatingWebhookConfiguration")
    }

    fn tag_service_of(fake: &FakeApiServer, tag: &str) -> Option<Service> {
        fake.get("v1", "Service", NS, &tag_service_name(tag))
            .map(|v| serde_json::from_value(v).expect("a Service"))
    }

    fn selector_values(s: &Option<LabelSelector>, key: &str) -> Option<(String, Vec<String>)> {
        s.as_ref()?
            .match_expressions
            .as_ref()?
            .iter()
            .find(|r| r.key == key)
            .map(|r| (r.operator.clone(), r.values.clone().unwrap_or_default()))
    }

    #[tokio::test]
    async fn set_creates_the_webhook_and_service_of_a_tag() {
        let fake = FakeApiServer::start().await;
        mk_revision(&fake, "canary");
        let c = client(&fake).await;
        let got = set(&c, &opts("prod", "canary", false)).await.expect("set");
        assert_eq!(got, SetOutcome::Created);

        let mwc = tag_webhook_of(&fake, "prod");
        let l = mwc.metadata.labels.clone().unwrap_or_default();
        assert_eq!(l[TAG_LABEL], "prod");
        assert_eq!(l[REV_LABEL], "canary");
        let whs = mwc.webhooks.unwrap_or_default();
        let names: Vec<&str> = whs.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, [REV_NAMESPACE, REV_OBJECT], "not the default tag");
        for w in &whs {
            let svc = w.client_config.service.as_ref().expect("service");
            assert_eq!(
                (svc.name.as_str(), svc.namespace.as_str()),
                ("strait-canary", NS)
            );
            assert_eq!(svc.path.as_deref(), Some("/inject"));
            assert_eq!(
                w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()),
                Some(&b"CA-bundle"[..]),
                "caBundle copied from the revision"
            );
            assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
            assert_eq!(w.side_effects, "None");
        }
        assert_eq!(
            selector_values(&whs[0].namespace_selector, REV_LABEL),
            Some(("In".into(), vec!["prod".into()]))
        );
        assert_eq!(
            selector_values(&whs[1].object_selector, REV_LABEL),
            Some(("In".into(), vec!["prod".into()]))
        );

        let svc = tag_service_of(&fake, "prod").expect("tag Service");
        let spec = svc.spec.expect("spec");
        let sel = spec.selector.expect("selector");
        assert_eq!(sel["app"], "strait");
        assert_eq!(sel[POD_REV_LABEL], "canary");
        let port = &spec.ports.expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("grpc-xds"), 15010));
    }

    #[tokio::test]
    async fn set_refuses_missing_revisions_revision_names_and_bad_names() {
        let fake = FakeApiServer::start().await;
        mk_revision(&fake, "stable");
        mk_revision(&fake, "canary");
        let c = client(&fake).await;
        let err = set(&c, &opts("prod", "nope", false))
            .await
            .expect_err("refused");
        assert!(matches!(err, TagError::NoSuchRevision { .. }), "{err}");
        assert!(
            err.to_string().contains("strait-sidecar-injector-nope"),
            "{err}"
        );
        let err = set(&c, &opts("canary", "stable", false))
            .await
            .expect_err("refused");
        assert!(matches!(err, TagError::NameIsRevision { .. }), "{err}");
        let err = set(&c, &opts("canary", "stable", true))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, TagError::NameIsRevision { .. }),
            "--overwrite does not let a tag shadow a revision: {err}"
        );
        let err = set(&c, &opts("Prod", "stable", false))
            .await
            .expect_err("refused");
        assert!(matches!(err, TagError::InvalidName { .. }), "{err}");
        assert!(
            fake.get(
                MWC,
                "MutatingWebhookConfiguration",
                "",
                "istio-revision-tag-canary"
            )
            .is_none()
        );
    }

    #[tokio::test]
    async fn moving_a_tag_needs_overwrite_and_moves_webhook_and_service() {
        let fake = FakeApiServer::start().await;
        mk_revision(&fake, "stable");
        mk_revision(&fake, "canary");
        let c = client(&fake).await;
        set(&c, &opts("prod", "stable", false)).await.expect("set");
        // The API server assigns the Service a cluster IP, which a move must keep.
        let mut svc = fake
            .get("v1", "Service", NS, "strait-tag-prod")
            .expect("service");
        svc["spec"]["clusterIP"] = json!("10.96.0.42");
        fake.apply(svc);

        let err = set(&c, &opts("prod", "canary", false))
            .await
            .expect_err("refused");
        match &err {
            TagError::Exists {
                current, requested, ..
            } => assert_eq!((current.as_str(), requested.as_str()), ("stable", "canary")),
            other => panic!("expected Exists, got {other}"),
        }
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert_eq!(
            tag_webhook_of(&fake, "prod")
                .metadata
                .labels
                .unwrap_or_default()[REV_LABEL],
            "stable",
            "a refused move changes nothing"
        );

        // Setting the same revision again is not a move.
        let again = set(&c, &opts("prod", "stable", false)).await.expect("set");
        assert_eq!(again, SetOutcome::Unchanged);

        let moved = set(&c, &opts("prod", "canary", true)).await.expect("move");
        assert_eq!(
            moved,
            SetOutcome::Moved {
                from: "stable".into()
            }
        );
        let mwc = tag_webhook_of(&fake, "prod");
        assert_eq!(mwc.metadata.labels.unwrap_or_default()[REV_LABEL], "canary");
        for w in mwc.webhooks.unwrap_or_default() {
            let svc = w.client_config.service.expect("service");
            assert_eq!(svc.name, "strait-canary");
        }
        let svc = tag_service_of(&fake, "prod").expect("service");
        assert_eq!(svc.metadata.labels.unwrap_or_default()[REV_LABEL], "canary");
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.selector.expect("selector")[POD_REV_LABEL], "canary");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.42"));

        // And back: rollback is the same command.
        let back = set(&c, &opts("prod", "stable", true))
            .await
            .expect("move back");
        assert_eq!(
            back,
            SetOutcome::Moved {
                from: "canary".into()
            }
        );
    }

    #[tokio::test]
    async fn the_default_tag_owns_istio_injection_and_switches_the_default_revision() {
        let fake = FakeApiServer::start().await;
        mk_revision(&fake, "default");
        mk_revision(&fake, "canary");
        let c = client(&fake).await;
        let got = set(&c, &opts("default", "canary", false))
            .await
            .expect("set");
        assert_eq!(
            got,
            SetOutcome::Created,
            "a tag may be named after the default revision"
        );

        let whs = tag_webhook_of(&fake, "default")
            .webhooks
            .unwrap_or_default();
        let ns_wh = whs
            .iter()
            .find(|w| w.name == NAMESPACE)
            .expect("namespace webhook");
        assert_eq!(
            selector_values(&ns_wh.namespace_selector, INJECTION_LABEL),
            Some(("In".into(), vec!["enabled".into()]))
        );
        let obj_wh = whs
            .iter()
            .find(|w| w.name == OBJECT)
            .expect("object webhook");
        assert_eq!(
            selector_values(&obj_wh.object_selector, INJECT_LABEL),
            Some(("In".into(), vec!["true".into()]))
        );

        let revision_default = |fake: &FakeApiServer| -> MutatingWebhookConfiguration {
            serde_json::from_value(
                fake.get(
                    MWC,
                    "MutatingWebhookConfiguration",
                    "",
                    "strait-sidecar-injector-default",
                )
                .expect("default revision webhook"),
            )
            .expect("typed")
        };
        for w in revision_default(&fake).webhooks.unwrap_or_default() {
            assert_eq!(
                selector_values(&w.namespace_selector, "istio.io/deactivated"),
                Some(("In".into(), vec!["never-match".into()])),
                "{} still matches namespaces",
                w.name
            );
            assert!(
                w.client_config.ca_bundle.is_some(),
                "the configuration stays, with its caBundle"
            );
        }

        remove(&c, "default", false, NS).await.expect("remove");
        let whs = revision_default(&fake).webhooks.unwrap_or_default();
        let ns_wh = whs
            .iter()
            .find(|w| w.name == NAMESPACE)
            .expect("namespace webhook");
        assert_eq!(
            selector_values(&ns_wh.namespace_selector, INJECTION_LABEL),
            Some(("In".into(), vec!["enabled".into()])),
            "removing the default tag hands istio-injection back to the default revision"
        );
    }

    #[tokio::test]
    async fn list_shows_tags_namespaces_and_pods_per_revision() {
        let fake = FakeApiServer::start().await;
        mk_revision(&fake, "stable");
        mk_revision(&fake, "canary");
        let c = client(&fake).await;
        set(&c, &opts("prod", "stable", false)).await.expect("set");
        set(&c, &opts("default", "canary", false))
            .await
            .expect("set");
        mk_namespace(&fake, "shop", json!({"istio.io/rev": "prod"}));
        mk_namespace(&fake, "pay", json!({"istio.io/rev": "prod"}));
        mk_namespace(&fake, "web", json!({"istio-injection": "enabled"}));
        mk_namespace(&fake, "batch", json!({"istio.io/rev": "stable"}));
        mk_namespace(&fake, "plain", json!({}));
        mk_pod(&fake, "shop", "cart", "stable", Some("prod"));
        mk_pod(&fake, "pay", "ledger", "stable", Some("prod"));
        mk_pod(&fake, "web", "front", "canary", Some("default"));
        mk_pod(&fake, "batch", "job", "stable", None);
        // Injected through prod while it pointed to an older revision: it follows the tag.
        mk_pod(&fake, "shop", "old-cart", "old", Some("prod"));
        // A control-plane pod: no proxy.
        mk_pod(&fake, NS, "strait", "canary", None);

        let report = list(&c).await.expect("list");
        assert_eq!(
            report.tags,
            vec![
                TagRow {
                    tag: "default".into(),
                    revision: "canary".into(),
                    namespaces: vec!["web".into()],
                    pods: 1,
                },
                TagRow {
                    tag: "prod".into(),
                    revision: "stable".into(),
                    namespaces: vec!["pay".into(), "shop".into()],
                    pods: 3,
                },
            ]
        );
        let text = report.render();
        let expected = "\
TAG       REVISION   NAMESPACES   PODS
default   canary     web          1
prod      stable     pay,shop     3

REVISION   TAGS      PODS   PINNED
canary     default   1      0
stable     prod      4      1
";
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn remove_refuses_a_tag_in_use_unless_forced() {
        let fake = FakeApiServer::start().await;
        mk_revision(&fake, "stable");
        let c = client(&fake).await;
        set(&c, &opts("prod", "stable", false)).await.expect("set");
        mk_namespace(&fake, "shop", json!({"istio.io/rev": "prod"}));

        let err = remove(&c, "prod", false, NS).await.expect_err("refused");
        match &err {
            TagError::InUse { namespaces, .. } => assert_eq!(namespaces, &["shop".to_string()]),
            other => panic!("expected InUse, got {other}"),
        }
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(tag_service_of(&fake, "prod").is_some(), "nothing deleted");

        let removed = remove(&c, "prod", true, NS).await.expect("forced remove");
        assert_eq!(removed.revision, "stable");
        assert_eq!(removed.namespaces, ["shop".to_string()]);
        assert!(
            fake.get(
                MWC,
                "MutatingWebhookConfiguration",
                "",
                "istio-revision-tag-prod"
            )
            .is_none()
        );
        assert!(tag_service_of(&fake, "prod").is_none());

        let err = remove(&c, "prod", false, NS).await.expect_err("refused");
        assert!(matches!(err, TagError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("istio-revision-tag-prod"), "{err}");

        // A tag nobody uses goes without --force.
        set(&c, &opts("spare", "stable", false)).await.expect("set");
        remove(&c, "spare", false, NS)
            .await
            .expect("remove unused tag");
    }
}
