//! The directory source: a folder of Kubernetes manifests, watched for changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use notify::Watcher;
use strait_api::{Object, ObjectRef, Severity};
use strait_model::{ClusterEvent, Event};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::manifest::{Problem, is_manifest, load_file};
use crate::{Error, Result};

/// Settings of the directory source.
#[derive(Debug, Clone)]
pub struct DirOptions {
    /// Namespace of objects that name none (as `kubectl apply` without `-n`).
    pub default_namespace: String,
    /// How often to look for changes even without file-system notifications (a safety net
    /// for file systems and editors that do not report every change).
    pub poll_interval: Duration,
    /// How long to wait after a notification for related writes to finish.
    pub settle: Duration,
}

impl Default for DirOptions {
    fn default() -> Self {
        Self {
            default_namespace: "default".to_string(),
            poll_interval: Duration::from_secs(2),
            settle: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    hash: u64,
}

struct FileState {
    fingerprint: Fingerprint,
    /// The objects this file defines now (last good version of each).
    objects: BTreeMap<ObjectRef, Arc<Object>>,
    problems: Vec<Problem>,
}

/// The problems currently known, by file: shared with the status API.
#[derive(Debug, Default, Clone)]
pub struct Problems(Arc<Mutex<BTreeMap<PathBuf, Vec<Problem>>>>);

impl Problems {
    /// Every current problem, by file order.
    pub fn all(&self) -> Vec<Problem> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    fn set(&self, file: &Path, problems: Vec<Problem>) {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if problems.is_empty() {
            m.remove(file);
        } else {
            m.insert(file.to_path_buf(), problems);
        }
    }
}

/// Reads a directory of manifests and reports what changed since the last scan.
pub struct DirSource {
    root: PathBuf,
    opts: DirOptions,
    files: BTreeMap<PathBuf, FileState>,
    /// What the index holds from this source.
    applied: HashMap<ObjectRef, Arc<Object>>,
    problems: Problems,
    scans: Arc<std::sync::atomic::AtomicU64>,
}

fn fingerprint(path: &Path, content: Option<&[u8]>) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    let hash = match content {
        Some(c) => xxhash_rust::xxh3::xxh3_64(c),
        None => 0,
    };
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        hash,
    })
}

fn list_manifests(root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(root)?;
    if meta.is_file() {
        out.push(root.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let is_dir = std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            list_manifests(&path, out)?;
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl DirSource {
    /// A source over `root` (a directory, or a single file).
    pub fn new(root: impl Into<PathBuf>, opts: DirOptions) -> Self {
        Self {
            root: root.into(),
            opts,
            files: BTreeMap::new(),
            applied: HashMap::new(),
            problems: Problems::default(),
            scans: Arc::default(),
        }
    }

    /// The problems currently known, shared: it stays current as the source rescans.
    pub fn problems(&self) -> Problems {
        self.problems.clone()
    }

    /// A counter of directory scans, readable while the source runs.
    pub fn scan_counter(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.scans.clone()
    }

    /// Reads what changed on disk and returns the events that bring the index up to date.
    pub fn scan(&mut self) -> Result<Vec<Event>> {
        self.scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut paths = Vec::new();
        list_manifests(&self.root, &mut paths).map_err(|source| Error::Io {
            path: self.root.clone(),
            source,
        })?;
        paths.sort();
        let present: BTreeSet<PathBuf> = paths.iter().cloned().collect();
        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            info!(file = %p.display(), "manifest file removed");
            self.files.remove(&p);
            self.problems.set(&p, Vec::new());
            changed = true;
        }
        for path in paths {
            if self.refresh_file(&path) {
                changed = true;
            }
        }
        if !changed {
            return Ok(Vec::new());
        }
        Ok(self.diff())
    }

    /// Re-reads one file if it changed; true if its objects or problems changed.
    fn refresh_file(&mut self, path: &Path) -> bool {
        let quick = fingerprint(path, None);
        if let (Some(state), Some(q)) = (self.files.get(path), &quick)
            && state.fingerprint.len == q.len
            && state.fingerprint.modified == q.modified
        {
            return false;
        }
        let Ok(bytes) = std::fs::read(path) else {
            return false;
        };
        let Some(fp) = fingerprint(path, Some(&bytes)) else {
            return false;
        };
        if let Some(state) = self.files.get_mut(path)
            && state.fingerprint.hash == fp.hash
        {
            state.fingerprint = fp;
            return false;
        }
        let content = load_file(path, &self.opts.default_namespace);
        let previous = self.files.remove(path);
        let prev_objects = previous.map(|s| s.objects).unwrap_or_default();
        let mut objects: BTreeMap<ObjectRef, Arc<Object>> = BTreeMap::new();
        for (_, o) in content.objects {
            let r = o.reference();
            if objects.contains_key(&r) {
                warn!(file = %path.display(), object = %r, "object defined twice in one file; the later one wins");
            }
            objects.insert(r, Arc::new(o));
        }
        // Refused objects keep their last good version.
        for r in &content.refused {
            if !objects.contains_key(r)
                && let Some(old) = prev_objects.get(r)
            {
                objects.insert(r.clone(), old.clone());
            }
        }
        // Part of the file is unreadable: nothing it held before may be dropped because of it.
        if content.incomplete {
            for (r, old) in &prev_objects {
                objects.entry(r.clone()).or_insert_with(|| old.clone());
            }
        }
        for p in &content.problems {
            match p.severity {
                Severity::Error => warn!(
                    file = %p.file.display(),
                    document = ?p.document,
                    object = ?p.object.as_ref().map(ToString::to_string),
                    field = ?p.field,
                    reason = %p.reason,
                    "invalid manifest skipped; the last good version stays in force"
                ),
                Severity::Warning => info!(
                    file = %p.file.display(),
                    document = ?p.document,
                    object = ?p.object.as_ref().map(ToString::to_string),
                    field = ?p.field,
                    reason = %p.reason,
                    "manifest warning"
                ),
            }
        }
        debug!(file = %path.display(), objects = objects.len(), ignored = content.ignored, "manifest file read");
        self.problems.set(path, content.problems.clone());
        self.files.insert(
            path.to_path_buf(),
            FileState {
                fingerprint: fp,
                objects,
                problems: content.problems,
            },
        );
        true
    }

    /// The objects the files define now (later files win), compared with what was applied.
    fn diff(&mut self) -> Vec<Event> {
        let mut desired: HashMap<ObjectRef, (&Path, Arc<Object>)> = HashMap::new();
        for (path, state) in &self.files {
            for (r, o) in &state.objects {
                if let Some((other, _)) = desired.insert(r.clone(), (path, o.clone())) {
                    warn!(object = %r, first = %other.display(), second = %path.display(), "object defined in two files; the later file wins");
                }
            }
        }
        let mut events = Vec::new();
        let mut applied = HashMap::with_capacity(desired.len());
        for (r, (_, o)) in desired {
            let same = self
                .applied
                .get(&r)
                .is_some_and(|old| Arc::ptr_eq(old, &o) || **old == *o);
            if !same {
                events.push(Event::Apply(Box::new((*o).clone())));
            }
            applied.insert(r, o);
        }
        let mut removed: Vec<ObjectRef> = self
            .applied
            .keys()
            .filter(|r| !applied.contains_key(*r))
            .cloned()
            .collect();
        removed.sort();
        events.extend(removed.into_iter().map(Event::Delete));
        self.applied = applied;
        events
    }

    /// The file that defines an object (the one in force when several do).
    pub fn origin(&self, r: &ObjectRef) -> Option<&Path> {
        self.files
            .iter()
            .rev()
            .find(|(_, f)| f.objects.contains_key(r))
            .map(|(p, _)| p.as_path())
    }

    /// The objects in force, as the index should hold them.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.applied.values().map(|o| &**o)
    }

    /// Number of problems (errors and warnings) in the files.
    pub fn problem_count(&self) -> usize {
        self.files.values().map(|f| f.problems.len()).sum()
    }

    /// Runs the source: an initial scan followed by `Synced`, then a rescan whenever the
    /// file system reports a change (and every poll interval as a safety net).
    pub async fn run(mut self, tx: mpsc::Sender<ClusterEvent>) -> Result<()> {
        let initial = self.scan()?;
        info!(dir = %self.root.display(), objects = self.applied.len(), problems = self.problem_count(), "config directory loaded");
        for e in initial {
            if tx.send(e.into()).await.is_err() {
                return Ok(());
            }
        }
        if tx.send(Event::Synced.into()).await.is_err() {
            return Ok(());
        }
        let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reads (our own scans open every file) change nothing: reacting to them would
            // make each scan trigger the next.
            if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = notify_tx.send(());
            }
        })
        .and_then(|mut w| {
            w.watch(&self.root, notify::RecursiveMode::Recursive)?;
            Ok(w)
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(source) => {
                let e = Error::Watch {
                    path: self.root.clone(),
                    source,
                };
                warn!(error = %e, interval = ?self.opts.poll_interval, "file-system notifications unavailable; polling only");
                None
            }
        };
        let mut poll = tokio::time::interval(self.opts.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = notify_rx.recv() => {
                    if n.is_none() {
                        // The watcher is gone; keep polling.
                        poll.tick().await;
                    } else {
                        // Let a burst of writes (an editor saving, a `cp -r`) finish.
                        tokio::time::sleep(self.opts.settle).await;
                        while notify_rx.try_recv().is_ok() {}
                    }
                }
                _ = poll.tick() => {}
            }
            match self.scan() {
                Ok(events) => {
                    if !events.is_empty() {
                        info!(changes = events.len(), "config directory changed");
                    }
                    for e in events {
                        if tx.send(e.into()).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, "config directory scan failed; keeping the current config")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!("apply {}", o.reference()),
                Event::Delete(r) => format!("delete {r}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn svc(name: &str, port: u32) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: {port}}}]}}\n"
        )
    }

    fn write(dir: &Path, file: &str, text: &str) {
        // A later write in the same clock tick must still be seen as a change.
        let p = dir.join(file);
        std::fs::write(&p, text).expect("write");
        let bump = SystemTime::now()
            + Duration::from_secs(std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) % 7 + 1);
        let _ = std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(bump));
    }

    #[test]
    fn add_edit_remove_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut src = DirSource::new(dir.path(), DirOptions::default());
        write(dir.path(), "a.yaml", &svc("a", 80));
        write(
            dir.path(),
            "b.yml",
            &format!("{}---\n{}", svc("b", 80), svc("c", 80)),
        );
        assert_eq!(
            names(&src.scan().expect("scan")).len(),
            3,
            "three services applied"
        );
        assert!(src.scan().expect("rescan").is_empty(), "nothing changed");
        write(dir.path(), "b.yml", &svc("b", 81));
        assert_eq!(
            names(&src.scan().expect("scan")),
            ["apply Service default/b", "delete Service default/c"]
        );
        std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
        assert_eq!(
            names(&src.scan().expect("scan")),
            ["delete Service default/a"]
        );
    }

    #[test]
    fn invalid_edits_keep_the_last_good_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut src = DirSource::new(dir.path(), DirOptions::default());
        write(
            dir.path(),
            "a.yaml",
            &format!("{}---\n{}", svc("a", 80), svc("b", 80)),
        );
        src.scan().expect("scan");
        // b becomes invalid: it stays as it was, a's change goes through.
        write(
            dir.path(),
            "a.yaml",
            &format!("{}---\n{}", svc("a", 81), svc("b", 70000)),
        );
        assert_eq!(
            names(&src.scan().expect("scan")),
            ["apply Service default/a"]
        );
        let problems = src.problems().all();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field.as_deref(), Some("spec.ports[0].port"));
        // A YAML syntax error keeps everything the file had.
        write(
            dir.path(),
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a\n",
        );
        assert!(src.scan().expect("scan").is_empty());
        assert!(src.problems().all()[0].reason.contains("not valid YAML"));
        // Fixing the file clears the problems and applies the fix.
        write(dir.path(), "a.yaml", &svc("a", 82));
        assert_eq!(
            names(&src.scan().expect("scan")),
            ["apply Service default/a", "delete Service default/b"]
        );
        assert!(src.problems().all().is_empty());
    }

    #[test]
    fn later_files_win_and_earlier_ones_take_over_on_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut src = DirSource::new(dir.path(), DirOptions::default());
        write(dir.path(), "1.yaml", &svc("a", 80));
        write(dir.path(), "2.yaml", &svc("a", 90));
        let ev = src.scan().expect("scan");
        assert_eq!(ev.len(), 1);
        std::fs::remove_file(dir.path().join("2.yaml")).expect("rm");
        let ev = src.scan().expect("scan");
        assert_eq!(names(&ev), ["apply Service default/a"]);
    }

    #[tokio::test]
    async fn run_reports_synced_then_follows_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", &svc("a", 80));
        let src = DirSource::new(
            dir.path(),
            DirOptions {
                poll_interval: Duration::from_millis(100),
                ..DirOptions::default()
            },
        );
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(src.run(tx));
        assert!(matches!(
            rx.recv().await.map(|e| e.event),
            Some(Event::Apply(_))
        ));
        assert!(matches!(
            rx.recv().await.map(|e| e.event),
            Some(Event::Synced)
        ));
        write(dir.path(), "b.yaml", &svc("b", 80));
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("change seen");
        assert!(
            matches!(next.map(|e| e.event), Some(Event::Apply(o)) if o.reference().name == "b")
        );
        task.abort();
    }

    /// An idle directory is not rescanned: the source's own reads must not look like
    /// changes (inotify reports opens).
    #[tokio::test]
    async fn idle_directory_is_not_rescanned() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..20 {
            write(dir.path(), &format!("{i}.yaml"), &svc(&format!("s{i}"), 80));
        }
        let src = DirSource::new(
            dir.path(),
            DirOptions {
                poll_interval: Duration::from_secs(3600),
                ..DirOptions::default()
            },
        );
        let scans = src.scan_counter();
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(src.run(tx));
        while !matches!(rx.recv().await.map(|e| e.event), Some(Event::Synced) | None) {}
        tokio::time::sleep(Duration::from_millis(300)).await;
        let settled = scans.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            scans.load(std::sync::atomic::Ordering::Relaxed),
            settled,
            "no scans while nothing changes"
        );
        write(dir.path(), "new.yaml", &svc("new", 80));
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("change seen");
        assert!(matches!(next.map(|e| e.event), Some(Event::Apply(_))));
        task.abort();
    }
}
