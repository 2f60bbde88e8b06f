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

/// Objects held or now held by the files a scan found changed.
type Touched = BTreeSet<ObjectRef>;

/// Above this many (changed objects × files), one walk over every file is cheaper than
/// looking each changed object up in every file.
const FULL_DIFF_ABOVE: usize = 1 << 20;

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
        // Only a symbolic link (as in a mounted ConfigMap) needs a stat to know its target.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => std::fs::metadata(&path).is_ok_and(|m| m.is_dir()),
            Ok(t) => t.is_dir(),
            Err(_) => false,
        };
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

    /// Reads the whole directory and returns the events that bring the index up to date.
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
        let mut touched = Touched::default();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.forget_file(&p, &mut touched);
        }
        for path in paths {
            self.refresh_file(&path, &mut touched);
        }
        Ok(self.diff_touched(touched))
    }

    /// Looks only at the paths the file system reported (files created, written, renamed
    /// or removed, directories created or removed) and returns the events that bring the
    /// index up to date. Falls back to a whole scan for anything it cannot judge from the
    /// paths alone: the root itself, or a hidden directory or link (a ConfigMap volume swaps
    /// its `..data` link, which changes every file behind it without an event on them).
    pub fn scan_paths(&mut self, changed: &BTreeSet<PathBuf>) -> Result<Vec<Event>> {
        if self.root.is_file() || changed.iter().any(|p| self.needs_full_scan(p)) {
            return self.scan();
        }
        self.scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut touched = Touched::default();
        for path in changed {
            if self.hidden(path) != Some(false) {
                continue;
            }
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => {
                    let mut found = Vec::new();
                    if let Err(source) = list_manifests(path, &mut found) {
                        warn!(dir = %path.display(), error = %source, "cannot list a new directory; scanning everything");
                        return self.scan();
                    }
                    found.sort();
                    for f in found {
                        self.refresh_file(&f, &mut touched);
                    }
                }
                Ok(_) => {
                    if is_manifest(path) {
                        self.refresh_file(path, &mut touched);
                    }
                }
                Err(_) => {
                    // Gone: the file, or every file of a removed directory.
                    let gone: Vec<PathBuf> = self
                        .files
                        .range(path.clone()..)
                        .take_while(|(p, _)| p.starts_with(path))
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in gone {
                        self.forget_file(&p, &mut touched);
                    }
                }
            }
        }
        Ok(self.diff_touched(touched))
    }

    /// True for a reported path that a look at it alone cannot settle.
    fn needs_full_scan(&self, path: &Path) -> bool {
        match self.hidden(path) {
            None => true,
            // A hidden file (an editor's or a writer's temporary) is ignored; a hidden
            // directory or link may stand behind visible files.
            Some(hidden) => {
                hidden
                    && std::fs::symlink_metadata(path)
                        .is_ok_and(|m| m.is_dir() || m.file_type().is_symlink())
            }
        }
    }

    /// Whether a path below the root has a hidden component (such paths are never read);
    /// `None` for the root itself or a path outside it.
    fn hidden(&self, path: &Path) -> Option<bool> {
        let rel = path.strip_prefix(&self.root).ok()?;
        if rel.as_os_str().is_empty() {
            return None;
        }
        Some(
            rel.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.')),
        )
    }

    /// Drops a file that is gone.
    fn forget_file(&mut self, path: &Path, touched: &mut Touched) {
        if let Some(state) = self.files.remove(path) {
            info!(file = %path.display(), "manifest file removed");
            self.problems.set(path, Vec::new());
            touched.extend(state.objects.into_keys());
        }
    }

    /// Re-reads one file if it changed, and records the objects it held and holds.
    fn refresh_file(&mut self, path: &Path, touched: &mut Touched) {
        let quick = fingerprint(path, None);
        if let (Some(state), Some(q)) = (self.files.get(path), &quick)
            && state.fingerprint.len == q.len
            && state.fingerprint.modified == q.modified
        {
            return;
        }
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        let Some(fp) = fingerprint(path, Some(&bytes)) else {
            return;
        };
        if let Some(state) = self.files.get_mut(path)
            && state.fingerprint.hash == fp.hash
        {
            state.fingerprint = fp;
            return;
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
        touched.extend(prev_objects.into_keys());
        touched.extend(objects.keys().cloned());
        self.files.insert(
            path.to_path_buf(),
            FileState {
                fingerprint: fp,
                objects,
                problems: content.problems,
            },
        );
    }

    /// The events for the objects that changed files held or hold: each object's version in
    /// force (the last file defining it wins) compared with what was applied. Many objects
    /// (a first scan, a large copy) are settled by one walk over every file instead.
    fn diff_touched(&mut self, touched: Touched) -> Vec<Event> {
        if touched.is_empty() {
            return Vec::new();
        }
        if touched.len().saturating_mul(self.files.len()) > FULL_DIFF_ABOVE {
            return self.diff();
        }
        let mut events = Vec::new();
        let mut removed = Vec::new();
        for r in touched {
            let mut defining = self
                .files
                .iter()
                .rev()
                .filter_map(|(p, f)| f.objects.get(&r).map(|o| (p, o)));
            let winner = defining.next();
            if let (Some((later, _)), Some((earlier, _))) = (winner, defining.next()) {
                warn!(object = %r, first = %earlier.display(), second = %later.display(), "object defined in two files; the later file wins");
            }
            match winner {
                Some((_, o)) => {
                    let same = self
                        .applied
                        .get(&r)
                        .is_some_and(|old| Arc::ptr_eq(old, o) || **old == **o);
                    if !same {
                        events.push(Event::Apply(Box::new((**o).clone())));
                        self.applied.insert(r, o.clone());
                    }
                }
                None => {
                    if self.applied.remove(&r).is_some() {
                        removed.push(r);
                    }
                }
            }
        }
        removed.sort();
        events.extend(removed.into_iter().map(Event::Delete));
        events
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
        let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<Notice>();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Some(notice) = Notice::of(res) {
                let _ = notify_tx.send(notice);
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
        // The first poll comes one interval after the initial scan, not at once.
        let mut poll = tokio::time::interval_at(
            tokio::time::Instant::now() + self.opts.poll_interval,
            self.opts.poll_interval,
        );
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The paths reported since the last scan; `None`: scan everything.
            let mut reported: Option<BTreeSet<PathBuf>> = None;
            tokio::select! {
                n = notify_rx.recv() => match n {
                    // The watcher is gone; keep polling.
                    None => {
                        poll.tick().await;
                    }
                    Some(first) => {
                        // Let the writes in progress finish: a file being written is read
                        // once it is closed or renamed into place, or after the settle time.
                        let mut batch = Batch::default();
                        batch.add(&self, first);
                        let deadline = tokio::time::Instant::now() + self.opts.settle;
                        loop {
                            while let Ok(more) = notify_rx.try_recv() {
                                batch.add(&self, more);
                            }
                            if batch.complete() {
                                break;
                            }
                            match tokio::time::timeout_at(deadline, notify_rx.recv()).await {
                                Ok(Some(more)) => batch.add(&self, more),
                                Ok(None) | Err(_) => break,
                            }
                        }
                        reported = batch.paths;
                    }
                },
                _ = poll.tick() => {}
            }
            let started = std::time::Instant::now();
            let scanned = match &reported {
                Some(paths) => self.scan_paths(paths),
                None => self.scan(),
            };
            match scanned {
                Ok(events) => {
                    debug!(
                        changes = events.len(),
                        files = reported.as_ref().map(BTreeSet::len),
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "config directory scanned"
                    );
                    if !events.is_empty() {
                        info!(
                            changes = events.len(),
                            files = reported.as_ref().map(BTreeSet::len),
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "config directory changed"
                        );
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

/// Whether a notified path may still be being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Complete: closed after writing, renamed into place, its attributes changed.
    Done,
    /// Possibly half-written or about to be replaced: created, written, removed.
    Writing,
}

/// What one file-system notification says.
#[derive(Debug)]
enum Notice {
    /// These paths changed.
    Paths(Vec<(PathBuf, Progress)>),
    /// The watcher cannot say what changed (a queue overflow, an error): scan everything.
    Everything,
}

impl Notice {
    /// `None` for reads, which change nothing: our own scans open every file, and reacting
    /// to them would make each scan trigger the next.
    fn of(res: notify::Result<notify::Event>) -> Option<Notice> {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        let e = match res {
            Ok(e) if !e.need_rescan() && !e.paths.is_empty() => e,
            _ => return Some(Notice::Everything),
        };
        let progress = match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(CreateKind::Folder)
            | EventKind::Modify(ModifyKind::Metadata(_) | ModifyKind::Name(RenameMode::To)) => {
                Progress::Done
            }
            EventKind::Access(_) => return None,
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                // A rename names its sources, then its destination: the destination is
                // complete, a source is gone (it may be replaced next).
                let last = e.paths.len() - 1;
                let paths = e.paths.into_iter().enumerate().map(|(i, p)| {
                    let progress = if i == last {
                        Progress::Done
                    } else {
                        Progress::Writing
                    };
                    (p, progress)
                });
                return Some(Notice::Paths(paths.collect()));
            }
            _ => Progress::Writing,
        };
        Some(Notice::Paths(
            e.paths.into_iter().map(|p| (p, progress)).collect(),
        ))
    }
}

/// The notifications gathered before a scan.
#[derive(Debug)]
struct Batch {
    /// Paths reported; `None`: everything is to be scanned.
    paths: Option<BTreeSet<PathBuf>>,
    /// Reported, visible paths whose last notification left them possibly half-written.
    writing: BTreeSet<PathBuf>,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            paths: Some(BTreeSet::new()),
            writing: BTreeSet::new(),
        }
    }
}

impl Batch {
    fn add(&mut self, dir: &DirSource, notice: Notice) {
        let Notice::Paths(list) = notice else {
            self.paths = None;
            return;
        };
        if let Some(paths) = &mut self.paths {
            paths.extend(list.iter().map(|(p, _)| p.clone()));
        }
        for (path, progress) in list {
            // Hidden files are never read: a writer's temporary, or a ConfigMap volume's
            // data, whose link is swapped (renamed) once everything is written.
            if dir.hidden(&path) != Some(false) {
                continue;
            }
            if progress == Progress::Done {
                self.writing.remove(&path);
            } else {
                self.writing.insert(path);
            }
        }
    }

    /// Whether nothing reported may still be being written.
    fn complete(&self) -> bool {
        self.paths.is_some() && self.writing.is_empty()
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

    fn set_of(dir: &Path, names: &[&str]) -> BTreeSet<PathBuf> {
        names.iter().map(|n| dir.join(n)).collect()
    }

    #[test]
    fn reported_paths_alone_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut src = DirSource::new(d, DirOptions::default());
        write(d, "a.yaml", &svc("a", 80));
        write(d, "b.yaml", &svc("b", 80));
        src.scan().expect("scan");
        write(d, "a.yaml", &svc("a", 81));
        write(d, "b.yaml", &svc("b", 81));
        // Only b is reported: only b is read.
        assert_eq!(
            names(&src.scan_paths(&set_of(d, &["b.yaml"])).expect("scan")),
            ["apply Service default/b"]
        );
        // A whole scan (the poll) still finds a.
        assert_eq!(
            names(&src.scan().expect("scan")),
            ["apply Service default/a"]
        );
        // A writer's hidden temporary renamed into place: the temporary is ignored.
        std::fs::write(d.join(".c.yaml.tmp"), svc("c", 80)).expect("write");
        std::fs::rename(d.join(".c.yaml.tmp"), d.join("c.yaml")).expect("rename");
        assert_eq!(
            names(
                &src.scan_paths(&set_of(d, &[".c.yaml.tmp", "c.yaml"]))
                    .expect("scan")
            ),
            ["apply Service default/c"]
        );
        std::fs::remove_file(d.join("c.yaml")).expect("rm");
        assert_eq!(
            names(&src.scan_paths(&set_of(d, &["c.yaml"])).expect("scan")),
            ["delete Service default/c"]
        );
        assert!(src.scan().expect("scan").is_empty(), "nothing left unseen");
    }

    #[test]
    fn reported_paths_keep_later_files_winning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut src = DirSource::new(d, DirOptions::default());
        write(d, "1.yaml", &svc("a", 80));
        write(d, "2.yaml", &svc("a", 90));
        src.scan().expect("scan");
        // The earlier file changes: the later one still wins, nothing to apply.
        write(d, "1.yaml", &svc("a", 81));
        assert!(
            src.scan_paths(&set_of(d, &["1.yaml"]))
                .expect("scan")
                .is_empty()
        );
        // The later file goes: the earlier one's version takes over.
        std::fs::remove_file(d.join("2.yaml")).expect("rm");
        let ev = src.scan_paths(&set_of(d, &["2.yaml"])).expect("scan");
        assert_eq!(names(&ev), ["apply Service default/a"]);
        assert!(matches!(&ev[0], Event::Apply(o) if format!("{o:?}").contains("81")));
    }

    #[test]
    fn reported_directories_are_listed_and_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut src = DirSource::new(d, DirOptions::default());
        write(d, "a.yaml", &svc("a", 80));
        src.scan().expect("scan");
        std::fs::create_dir_all(d.join("team/x")).expect("mkdir");
        write(&d.join("team"), "b.yaml", &svc("b", 80));
        write(&d.join("team/x"), "c.yaml", &svc("c", 80));
        assert_eq!(
            names(&src.scan_paths(&set_of(d, &["team"])).expect("scan")),
            ["apply Service default/b", "apply Service default/c"]
        );
        std::fs::remove_dir_all(d.join("team")).expect("rm");
        assert_eq!(
            names(&src.scan_paths(&set_of(d, &["team"])).expect("scan")),
            ["delete Service default/b", "delete Service default/c"]
        );
    }

    /// A mounted ConfigMap: visible links into a hidden `..data` link, swapped atomically.
    #[cfg(unix)]
    #[test]
    fn swapped_hidden_link_rescans_everything() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut src = DirSource::new(d, DirOptions::default());
        std::fs::create_dir(d.join("..v1")).expect("mkdir");
        write(&d.join("..v1"), "a.yaml", &svc("a", 80));
        symlink("..v1", d.join("..data")).expect("link");
        symlink("..data/a.yaml", d.join("a.yaml")).expect("link");
        assert_eq!(
            names(&src.scan().expect("scan")),
            ["apply Service default/a"]
        );
        std::fs::create_dir(d.join("..v2")).expect("mkdir");
        write(&d.join("..v2"), "a.yaml", &svc("a", 81));
        // Files in hidden directories are never read on their own.
        assert!(
            src.scan_paths(&set_of(d, &["..v2/a.yaml"]))
                .expect("scan")
                .is_empty()
        );
        symlink("..v2", d.join("..data_tmp")).expect("link");
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
        assert_eq!(
            names(
                &src.scan_paths(&set_of(d, &["..data_tmp", "..data"]))
                    .expect("scan")
            ),
            ["apply Service default/a"]
        );
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

    /// A file renamed into place, or closed after writing, is read at once; one still being
    /// written is not read before it is closed.
    #[tokio::test]
    async fn complete_files_are_read_at_once_and_half_written_ones_when_closed() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.yaml", &svc("a", 80));
        let settle = Duration::from_secs(20);
        let src = DirSource::new(
            dir.path(),
            DirOptions {
                poll_interval: Duration::from_secs(3600),
                settle,
                ..DirOptions::default()
            },
        );
        let problems = src.problems();
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(src.run(tx));
        while !matches!(rx.recv().await.map(|e| e.event), Some(Event::Synced) | None) {}
        let applied = async |rx: &mut mpsc::Receiver<ClusterEvent>| {
            // Well before the settle time: the scan was not waiting for it.
            let next = tokio::time::timeout(settle / 4, rx.recv())
                .await
                .expect("read before the settle time");
            match next.map(|e| e.event) {
                Some(Event::Apply(o)) => o,
                other => panic!("expected an object, got {other:?}"),
            }
        };

        // Written to a hidden temporary and renamed into place.
        std::fs::write(dir.path().join(".b.yaml.tmp"), svc("b", 80)).expect("write");
        std::fs::rename(dir.path().join(".b.yaml.tmp"), dir.path().join("b.yaml")).expect("mv");
        assert_eq!(applied(&mut rx).await.reference().name, "b");

        // Written in two parts; the first alone is a valid Service with one port.
        let head = "apiVersion: v1\nkind: Service\nmetadata:\n  name: c\nspec:\n  ports:\n  - {name: a, port: 80}\n";
        let mut f = std::fs::File::create(dir.path().join("c.yaml")).expect("create");
        f.write_all(head.as_bytes()).expect("write");
        f.flush().expect("flush");
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.write_all(b"  - {name: b, port: 81}\n").expect("write");
        drop(f);
        let c = applied(&mut rx).await;
        assert_eq!(c.reference().name, "c");
        let Object::Service(c) = c.as_ref() else {
            panic!("not a Service: {c:?}");
        };
        let ports = c.spec.as_ref().and_then(|s| s.ports.as_ref()).map(Vec::len);
        assert_eq!(ports, Some(2), "read only once the file was closed");
        assert!(problems.all().is_empty(), "{:?}", problems.all());
        task.abort();
    }
}
