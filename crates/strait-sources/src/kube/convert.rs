//! One watched kind: turns the watcher's events into index events, synchronously.
//!
//! * The objects of a (re)list (`Init`, `InitApply`…, `InitDone`) are buffered and sent as one
//!   [`Event::Reset`] of the kind, so a relist swaps in at once and never shows a half-empty
//!   mesh.
//! * Every object is trimmed, parsed with [`strait_api::parse_object`] and checked with
//!   [`strait_api::Object::validate`], as the directory source does. A refused object is
//!   reported and skipped: the index keeps its last good version (a refused update sends
//!   nothing; a relist sends the last good version in its place).
//! * Config (Istio's kinds, strait's policies) labelled `istio.io/rev` for another revision
//!   is treated as absent.
//! * An update that trims to the same content as what was sent (a pod's status heartbeat)
//!   sends nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::Value;
use strait_api::{Kind, Object, ObjectRef, ParseError, parse_object};
use strait_model::Event;
use tracing::{debug, warn};

use super::status::KubeProblem;
use super::trim::trim;

/// The label that scopes Istio config to one control-plane revision.
pub use strait_api::labels::ISTIO_REV as REVISION_LABEL;

/// What one watcher event leads to.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Events for the index, in order.
    pub events: Vec<Event>,
    /// A complete list was delivered: how many objects the kind now has, and whether it was
    /// a relist (not the first list).
    pub listed: Option<(usize, bool)>,
    /// The kind's refused objects changed: all of them now, and how many are new refusals.
    pub problems: Option<(Vec<KubeProblem>, u64)>,
}

enum Decision {
    /// A valid object: its identity, a hash of its trimmed content, the object.
    Use(ObjectRef, u64, Box<Object>),
    /// Not for this control plane (another revision, not the mesh ConfigMap).
    Absent(ObjectRef),
    /// Invalid: its identity, the hash of the refused content, why.
    Refused(ObjectRef, u64, Vec<KubeProblem>),
    /// Not an object at all.
    Skip,
}

#[derive(Default)]
struct Listing {
    objects: Vec<Object>,
    sent: HashMap<ObjectRef, u64>,
    refused: BTreeMap<ObjectRef, (u64, Vec<KubeProblem>)>,
}

/// The state of one kind's watch in one cluster.
pub(crate) struct KindWatch {
    cluster: Arc<str>,
    kind: Kind,
    api_version: String,
    revision: String,
    system_namespace: String,
    /// Keep a copy of each object's last good version, for kinds whose validation can refuse
    /// an update (Services and the config kinds); the high-volume kinds (pods, slices) are
    /// only checked for what the API server already enforces, so keeping copies of them
    /// would double their memory for nothing.
    keep_last_good: bool,
    listing: Option<Listing>,
    /// What the index holds from this watch: identity → hash of the trimmed content.
    sent: HashMap<ObjectRef, u64>,
    last_good: HashMap<ObjectRef, Object>,
    refused: BTreeMap<ObjectRef, (u64, Vec<KubeProblem>)>,
    lists: u64,
}

impl KindWatch {
    /// A watch of `kind`, served as `api_version`, for the control plane of `revision` whose
    /// mesh ConfigMap lives in `system_namespace`.
    pub(crate) fn new(
        cluster: Arc<str>,
        kind: Kind,
        api_version: &str,
        revision: &str,
        system_namespace: &str,
    ) -> Self {
        Self {
            cluster,
            kind,
            api_version: api_version.to_string(),
            revision: revision.to_string(),
            system_namespace: system_namespace.to_string(),
            keep_last_good: kind == Kind::Service || kind.is_config(),
            listing: None,
            sent: HashMap::new(),
            last_good: HashMap::new(),
            refused: BTreeMap::new(),
            lists: 0,
        }
    }

    /// Objects the index holds from this watch.
    pub(crate) fn len(&self) -> usize {
        self.sent.len()
    }

    /// Complete lists delivered so far.
    pub(crate) fn lists(&self) -> u64 {
        self.lists
    }

    /// Handles one watcher event.
    pub(crate) fn handle(&mut self, event: watcher::Event<DynamicObject>) -> Output {
        let mut out = Output::default();
        match event {
            watcher::Event::Init => self.listing = Some(Listing::default()),
            watcher::Event::InitApply(obj) => {
                let decision = self.decide(obj);
                let listing = self.listing.get_or_insert_with(Listing::default);
                match decision {
                    Decision::Use(r, hash, obj) => {
                        listing.sent.insert(r, hash);
                        listing.objects.push(*obj);
                    }
                    Decision::Refused(r, hash, problems) => {
                        if let (Some(old), Some(old_hash)) =
                            (self.last_good.get(&r), self.sent.get(&r))
                        {
                            listing.sent.insert(r.clone(), *old_hash);
                            listing.objects.push(old.clone());
                        }
                        listing.refused.insert(r, (hash, problems));
                    }
                    Decision::Absent(_) | Decision::Skip => {}
                }
            }
            watcher::Event::InitDone => {
                let listing = self.listing.take().unwrap_or_default();
                self.lists += 1;
                let refused = listing.refused;
                let new = self.log_new_refusals(&refused);
                let changed = new > 0 || refused.keys().ne(self.refused.keys());
                self.refused = refused;
                if changed {
                    out.problems = Some((self.all_problems(), new));
                }
                self.sent = listing.sent;
                self.last_good = if self.keep_last_good {
                    listing
                        .objects
                        .iter()
                        .map(|o| (o.reference(), o.clone()))
                        .collect()
                } else {
                    HashMap::new()
                };
                out.listed = Some((self.sent.len(), self.lists > 1));
                out.events.push(Event::Reset {
                    kinds: vec![self.kind],
                    objects: listing.objects,
                });
            }
            watcher::Event::Apply(obj) => match self.decide(obj) {
                Decision::Use(r, hash, obj) => {
                    if self.refused.remove(&r).is_some() {
                        out.problems = Some((self.all_problems(), 0));
                    }
                    if self.sent.get(&r) != Some(&hash) {
                        self.sent.insert(r.clone(), hash);
                        if self.keep_last_good {
                            self.last_good.insert(r, (*obj).clone());
                        }
                        out.events.push(Event::Apply(obj));
                    }
                }
                Decision::Refused(r, hash, problems) => {
                    let single = BTreeMap::from([(r.clone(), (hash, problems))]);
                    let new = self.log_new_refusals(&single);
                    self.refused.extend(single);
                    if new > 0 {
                        out.problems = Some((self.all_problems(), new));
                    }
                }
                Decision::Absent(r) => {
                    if self.refused.remove(&r).is_some() {
                        out.problems = Some((self.all_problems(), 0));
                    }
                    self.forget(&r, &mut out);
                }
                Decision::Skip => {}
            },
            watcher::Event::Delete(obj) => {
                let r = self.reference(&obj.metadata);
                if self.refused.remove(&r).is_some() {
                    out.problems = Some((self.all_problems(), 0));
                }
                self.forget(&r, &mut out);
            }
        }
        out
    }

    fn forget(&mut self, r: &ObjectRef, out: &mut Output) {
        self.last_good.remove(r);
        if self.sent.remove(r).is_some() {
            out.events.push(Event::Delete(r.clone()));
        }
    }

    fn reference(&self, meta: &kube::api::ObjectMeta) -> ObjectRef {
        let ns = if self.kind.is_namespaced() {
            meta.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        ObjectRef::new(self.kind, ns, meta.name.clone().unwrap_or_default())
    }

    fn all_problems(&self) -> Vec<KubeProblem> {
        self.refused
            .values()
            .flat_map(|(_, p)| p.iter().cloned())
            .collect()
    }

    /// Logs the refusals that are new (or whose content changed); returns how many.
    fn log_new_refusals(&self, refused: &BTreeMap<ObjectRef, (u64, Vec<KubeProblem>)>) -> u64 {
        let mut new = 0;
        for (r, (hash, problems)) in refused {
            if self.refused.get(r).is_some_and(|(h, _)| h == hash) {
                continue;
            }
            new += 1;
            let kept = self.last_good.contains_key(r);
            for p in problems {
                warn!(
                    cluster = %self.cluster,
                    kind = %p.kind,
                    namespace = %p.namespace,
                    name = %p.name,
                    field = p.field.as_deref().unwrap_or(""),
                    reason = %p.reason,
                    last_good_kept = kept,
                    "invalid object skipped; the last good version stays in force"
                );
            }
        }
        new
    }

    fn problem(&self, r: &ObjectRef, field: Option<String>, reason: String) -> KubeProblem {
        KubeProblem {
            kind: r.kind,
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            field: field.filter(|f| !f.is_empty()),
            reason,
        }
    }

    fn decide(&self, obj: DynamicObject) -> Decision {
        let r = self.reference(&obj.metadata);
        if r.name.is_empty() {
            return Decision::Skip;
        }
        if self.kind == Kind::ConfigMap
            && (r.namespace != self.system_namespace
                || !(r.name == "istio"
                    || r.name.strip_prefix("istio-") == Some(self.revision.as_str())))
        {
            return Decision::Absent(r);
        }
        if self.kind.is_config()
            && let Some(rev) = obj
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
            && *rev != self.revision
        {
            debug!(cluster = %self.cluster, object = %r, revision = %rev, "config of another revision ignored");
            return Decision::Absent(r);
        }
        let mut value = match serde_json::to_value(&obj) {
            Ok(v) => v,
            Err(error) => {
                warn!(cluster = %self.cluster, object = %r, %error, "object cannot be read; skipped");
                return Decision::Skip;
            }
        };
        if let Some(m) = value.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
            m.insert("kind".into(), Value::String(self.kind.as_str().into()));
        }
        trim(self.kind, &mut value);
        let hash = serde_json::to_vec(&value)
            .map(|b| xxhash_rust::xxh3::xxh3_64(&b))
            .unwrap_or_default();
        match parse_object(value, "default") {
            Ok(parsed) => {
                for w in &parsed.warnings {
                    debug!(cluster = %self.cluster, object = %r, field = %w.field, reason = %w.message, "object warning");
                }
                let issues = parsed.object.validate();
                if issues.has_errors() {
                    let problems = issues
                        .errors()
                        .map(|i| self.problem(&r, Some(i.field.clone()), i.message.clone()))
                        .collect();
                    Decision::Refused(r, hash, problems)
                } else {
                    Decision::Use(r, hash, Box::new(parsed.object))
                }
            }
            Err(ParseError::UnsupportedKind { .. }) => Decision::Skip,
            Err(ParseError::Field { field, reason, .. }) => {
                let p = self.problem(&r, Some(field), reason);
                Decision::Refused(r, hash, vec![p])
            }
            Err(e) => {
                let p = self.problem(&r, None, e.to_string());
                Decision::Refused(r, hash, vec![p])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dynobj(v: Value) -> DynamicObject {
        serde_json::from_value(v).expect("dynamic object")
    }

    fn vs(name: &str, host: &str, weight: i64, rev: Option<&str>) -> DynamicObject {
        let labels = rev.map(|r| json!({REVISION_LABEL: r})).unwrap_or(json!({}));
        dynobj(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels, "resourceVersion": "1"},
            "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}, "weight": weight}]}]},
        }))
    }

    fn watch() -> KindWatch {
        KindWatch::new(
            "c1".into(),
            Kind::VirtualService,
            "networking.istio.io/v1",
            "default",
            "istio-system",
        )
    }

    fn names(out: &Output) -> Vec<String> {
        out.events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!("apply {}", o.reference().name),
                Event::Delete(r) => format!("delete {}", r.name),
                Event::Reset { objects, .. } => {
                    let mut n: Vec<_> = objects.iter().map(|o| o.reference().name).collect();
                    n.sort();
                    format!("reset [{}]", n.join(","))
                }
                Event::Synced => "synced".into(),
            })
            .collect()
    }

    #[test]
    fn lists_become_one_reset() {
        let mut w = watch();
        assert!(w.handle(watcher::Event::Init).events.is_empty());
        assert!(
            w.handle(watcher::Event::InitApply(vs("a", "a", 100, None)))
                .events
                .is_empty()
        );
        assert!(
            w.handle(watcher::Event::InitApply(vs("b", "b", 100, None)))
                .events
                .is_empty()
        );
        let out = w.handle(watcher::Event::InitDone);
        assert_eq!(names(&out), ["reset [a,b]"]);
        assert_eq!(out.listed, Some((2, false)));
        // The same object again (a resync, a new resourceVersion) sends nothing.
        assert!(
            w.handle(watcher::Event::Apply(vs("a", "a", 100, None)))
                .events
                .is_empty()
        );
        let out = w.handle(watcher::Event::Apply(vs("a", "a2", 100, None)));
        assert_eq!(names(&out), ["apply a"]);
        let out = w.handle(watcher::Event::Delete(vs("b", "b", 100, None)));
        assert_eq!(names(&out), ["delete b"]);
        // A relist: b is back, a is gone.
        w.handle(watcher::Event::Init);
        w.handle(watcher::Event::InitApply(vs("b", "b", 100, None)));
        let out = w.handle(watcher::Event::InitDone);
        assert_eq!(names(&out), ["reset [b]"]);
        assert_eq!(out.listed, Some((1, true)));
        // What is kept is what the last list said: nothing accumulates across relists.
        assert_eq!((w.len(), w.last_good.len(), w.refused.len()), (1, 1, 0));
    }

    #[test]
    fn refused_updates_keep_the_last_good_version() {
        let mut w = watch();
        w.handle(watcher::Event::Init);
        w.handle(watcher::Event::InitApply(vs("a", "a", 100, None)));
        w.handle(watcher::Event::InitDone);
        // An invalid weight: nothing is sent (no delete), a problem is reported.
        let out = w.handle(watcher::Event::Apply(vs("a", "a", -5, None)));
        assert!(out.events.is_empty());
        let (problems, new) = out.problems.expect("problem reported");
        assert_eq!(new, 1);
        assert_eq!(problems[0].name, "a");
        assert_eq!(
            problems[0].field.as_deref(),
            Some("spec.http[0].route[0].weight")
        );
        // A relist while the object is still invalid keeps the last good version in the reset.
        w.handle(watcher::Event::Init);
        w.handle(watcher::Event::InitApply(vs("a", "a", -5, None)));
        let out = w.handle(watcher::Event::InitDone);
        assert_eq!(names(&out), ["reset [a]"]);
        assert!(out.problems.is_none(), "the same refusal is not new");
        match &out.events[0] {
            Event::Reset { objects, .. } => {
                let Object::VirtualService(v) = &objects[0] else {
                    panic!("a VirtualService")
                };
                assert_eq!(v.spec.http[0].route[0].weight, 100);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Fixed: applied, problem gone.
        let out = w.handle(watcher::Event::Apply(vs("a", "a", 50, None)));
        assert_eq!(names(&out), ["apply a"]);
        assert_eq!(out.problems.map(|(p, _)| p.len()), Some(0));
        // A new object that is invalid from the start is simply not there.
        let out = w.handle(watcher::Event::Apply(vs("n", "n", -1, None)));
        assert!(out.events.is_empty());
        let out = w.handle(watcher::Event::Delete(vs("n", "n", -1, None)));
        assert!(out.events.is_empty(), "never sent, nothing to delete");
    }

    #[test]
    fn other_revisions_are_absent() {
        let mut w = watch();
        w.handle(watcher::Event::Init);
        w.handle(watcher::Event::InitApply(vs(
            "mine",
            "a",
            100,
            Some("default"),
        )));
        w.handle(watcher::Event::InitApply(vs("all", "b", 100, None)));
        w.handle(watcher::Event::InitApply(vs(
            "theirs",
            "c",
            100,
            Some("canary"),
        )));
        let out = w.handle(watcher::Event::InitDone);
        assert_eq!(names(&out), ["reset [all,mine]"]);
        // Relabelled for another revision: removed.
        let out = w.handle(watcher::Event::Apply(vs("all", "b", 100, Some("canary"))));
        assert_eq!(names(&out), ["delete all"]);
        // And back.
        let out = w.handle(watcher::Event::Apply(vs("all", "b", 100, None)));
        assert_eq!(names(&out), ["apply all"]);
        // Edits of another revision's config change nothing.
        let out = w.handle(watcher::Event::Apply(vs(
            "theirs",
            "c2",
            100,
            Some("canary"),
        )));
        assert!(out.events.is_empty());
    }

    #[test]
    fn only_the_mesh_configmaps_of_the_system_namespace() {
        let mut w = KindWatch::new("c1".into(), Kind::ConfigMap, "v1", "canary", "istio-system");
        let cm = |ns: &str, name: &str| {
            dynobj(json!({"metadata": {"name": name, "namespace": ns}, "data": {"mesh": ""}}))
        };
        w.handle(watcher::Event::Init);
        for (ns, name) in [
            ("istio-system", "istio"),
            ("istio-system", "istio-canary"),
            ("istio-system", "istio-sidecar-injector"),
            ("istio-system", "istio-default"),
            ("other", "istio"),
        ] {
            w.handle(watcher::Event::InitApply(cm(ns, name)));
        }
        let out = w.handle(watcher::Event::InitDone);
        assert_eq!(names(&out), ["reset [istio,istio-canary]"]);
    }

    #[test]
    fn pods_that_change_only_in_trimmed_fields_send_nothing() {
        let mut w = KindWatch::new("c1".into(), Kind::Pod, "v1", "default", "istio-system");
        let pod = |rv: &str, restarts: i64| {
            dynobj(json!({
                "metadata": {"name": "p", "namespace": "ns", "resourceVersion": rv},
                "spec": {"containers": [{"name": "app", "image": "x"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.1",
                           "containerStatuses": [{"name": "app", "restartCount": restarts}]},
            }))
        };
        let out = w.handle(watcher::Event::Apply(pod("1", 0)));
        assert_eq!(names(&out), ["apply p"]);
        assert!(
            w.handle(watcher::Event::Apply(pod("2", 1)))
                .events
                .is_empty()
        );
        assert_eq!(w.len(), 1);
    }
}
