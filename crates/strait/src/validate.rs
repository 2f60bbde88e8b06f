//! `strait validate`: the checks the directory source applies, as a command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use strait_api::Severity;
use strait_sources::dir::{DirOptions, DirSource};

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
    for path in &args.paths {
        let mut src = DirSource::new(
            path,
            DirOptions {
                default_namespace: args.namespace.clone(),
                ..DirOptions::default()
            },
        );
        objects += src.scan()?.len();
        for p in src.problems().all() {
            match p.severity {
                Severity::Error => errors += 1,
                Severity::Warning => warnings += 1,
            }
            println!("{p}");
        }
    }
    println!("{objects} objects valid, {errors} errors, {warnings} warnings");
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
