//! Labels and names of revisions and tags, shared by the sources, the model, injection and
//! the command line.

/// Namespace label: `enabled` injects the namespace's pods with the default revision (the
/// revision the `default` tag points to), `disabled` (any other value) injects none.
pub const ISTIO_INJECTION: &str = "istio-injection";
/// Label naming a revision (or a tag): on namespaces and pods, which one injects them; on
/// Istio config, which control plane reads it; on webhooks and tag Services, whose they are.
pub const ISTIO_REV: &str = "istio.io/rev";
/// Label of a tag's objects (webhook, Service): the tag.
pub const ISTIO_TAG: &str = "istio.io/tag";
/// Pod label (and legacy annotation): `true` asks for injection, `false` refuses it.
pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
/// Label of control-plane pods and of the pods strait injected: the revision.
pub const STRAIT_REV: &str = "strait.io/rev";
/// Label of pods injected through a tag: the tag.
pub const STRAIT_TAG: &str = "strait.io/tag";
/// Prefix of a tag Service's name (`strait-tag-<tag>`, in the system namespace).
pub const TAG_SERVICE_PREFIX: &str = "strait-tag-";

/// Name of the Service of tag `tag`, which proxies injected through it connect to.
pub fn tag_service_name(tag: &str) -> String {
    format!("{TAG_SERVICE_PREFIX}{tag}")
}
