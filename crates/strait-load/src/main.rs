//! `strait-load`: the load harness of strait. Without a subcommand it generates a mesh,
//! starts `strait serve` on it (or uses a running one), connects simulated Envoy sidecars,
//! applies churn and reports convergence, CPU and memory. `generate` writes the mesh only;
//! `envoy-check` runs stock Envoys instead of simulated proxies.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{info, warn};

mod cmd;

/// Thousands of simulated proxies each receive and drop large responses: glibc's malloc
/// returns those pages to the kernel and faults fresh zeroed ones in for the next response,
/// which made page clearing the harness's largest CPU cost (it shares the cores with strait).
/// mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable that sets how long mimalloc waits before it returns freed memory
/// to the kernel (default 1 s; -1: never). It is read when the process loads.
pub(crate) const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// Runs this program again with mimalloc told never to return freed memory, unless the
/// environment already says what to do. Each change's wave of responses and ACKs frees
/// hundreds of megabytes; returned a second later, they were faulted in again (as zeroed
/// huge pages) by a later wave, in bursts that took the CPU from strait on the shared cores
/// and set the slowest changes' convergence times. Returns only if the program cannot be
/// started again.
fn keep_freed_memory() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(PURGE_DELAY).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PURGE_DELAY, "-1")
        .exec();
    eprintln!(
        "warning: cannot restart with {PURGE_DELAY}=-1 ({error}); freed memory goes back to the kernel"
    );
}

/// Load harness for strait: a generated mesh, churn, and many simulated ADS proxies.
#[derive(Parser)]
#[command(
    name = "strait-load",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: cmd::run::RunArgs,
    /// Worker threads of the harness's runtime (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Write the generated mesh into a directory, to serve it with a strait started by hand
    /// (under `perf`, say) and attach with `--xds-address`.
    Generate(cmd::run::GenerateArgs),
    /// Start stock Envoys against strait and time a change reaching every one of them.
    EnvoyCheck(cmd::envoy_check::EnvoyCheckArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("strait_load=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_tracing();
    // Thousands of connections: one descriptor each here, and one each in the strait we
    // start (it inherits the limit).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(limit = n, "open-file limit"),
        Err(error) => warn!(%error, "cannot raise the open-file limit"),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let work = async {
            match cli.command {
                None => cmd::run::main(cli.run).await,
                Some(Command::Generate(args)) => cmd::run::generate(args),
                Some(Command::EnvoyCheck(args)) => cmd::envoy_check::main(args).await,
            }
        };
        // Dropping the work on Ctrl-C drops the guards that kill strait and Envoys.
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Proxy tasks may still be winding down; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
