//! `strait validate`: the checks the control plane applies, as a command: every object on
//! its own (as the directory source does), then the mesh as a whole (as translation sees it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use strait_api::{ObjectRef, Severity};
use strait_model::{IndexOptions, MeshIndex};
use strait_sources::dir::{DirOptions, DirSource};
use strait_translate::ConfigIndex;
use strait_translate::analysis::analyze;

/// Options of `strait validate`.
#[derive(Args)]
pub struct ValidateArgs {
    /// Files or directories of manifests.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(long, default_value = "default")]
    namespace: String,
}

/// Validates the paths; exit status 1 when any object is invalid.
pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut errors = 0usize;
    let mut warnings = 0usize;
    let mut objects = 0usize;
    let mut count = |sev: Severity| match sev {
        Severity::Error => errors += 1,
        Severity::Warning => warnings += 1,
    };
    let mut sources = Vec::new();
    let mut index = MeshIndex::new(IndexOptions::default());
    for path in &args.paths {
        let mut src = DirSource::new(
            path,
            DirOptions {
                default_namespace: args.namespace.clone(),
                ..DirOptions::default()
            },
        );
        src.scan()?;
        for p in src.problems().all() {
            count(p.severity);
            println!("{p}");
        }
        for o in src.objects() {
            objects += 1;
            index.apply(o.clone());
        }
        sources.push(src);
    }
    let (snap, _) = index.snapshot();
    let config = ConfigIndex::new(&snap);
    for p in analyze(&snap, &config) {
        count(p.severity);
        let r = ObjectRef::new(p.kind, &*p.object.namespace, &*p.object.name);
        let file = sources
            .iter()
            .find_map(|s| s.origin(&r))
            .map(|f| format!("{}: ", f.display()))
            .unwrap_or_default();
        let sev = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        println!("{file}{r}: {}: {sev}: {}", p.field, p.message);
    }
    println!("{objects} objects valid, {errors} errors, {warnings} warnings");
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
