//! The `strait` command: the control plane (`serve`) and the tools around it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strait::{bootstrap, drain, init, inject, proxy_status, serve, tag, validate};

/// An xDS control plane for stock Envoy that reads Istio networking config.
#[derive(Parser)]
#[command(name = "strait", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(serve::ServeArgs),
    /// Print an Envoy bootstrap that points a stock Envoy at strait.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Show every connected proxy and how far it is in sync, per type.
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// Check manifests the way the control plane would, without running it.
    Validate(validate::ValidateArgs),
    /// Point revision tags at control-plane revisions (set, list, remove).
    Tag(tag::TagArgs),
    /// Add the Envoy sidecar to manifests (Pods and workload templates), like kube-inject.
    Inject(inject::InjectArgs),
    /// In an injected pod's init container: capture traffic and write Envoy's bootstrap.
    Init(init::InitArgs),
    /// Envoy's preStop hook in injected pods: drain inbound listeners, then wait.
    Drain(drain::DrainArgs),
    /// Envoy's postStart hook when the application is held: wait until Envoy is ready.
    Wait(drain::WaitArgs),
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_tracing(args.log_json);
            serve::run(args)
        }
        Command::Bootstrap(args) => bootstrap::run(args),
        Command::ProxyStatus(args) => proxy_status::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Tag(args) => tag::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Init(args) => init::run(args),
        Command::Drain(args) => drain::run(args),
        Command::Wait(args) => drain::run_wait(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
