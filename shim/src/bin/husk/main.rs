//! `husk`: the operator's command line, one file per subcommand under
//! `husk/`. Every subcommand reads the configuration `--config FILE`,
//! else `$HUSK_CONFIG`, else /etc/husk/configuration.toml, else the
//! built-in defaults (docs/operations.md).

mod args;
mod boot;
mod check;
mod console;
mod containerd_config;
mod cri_toml;
mod env;
mod logs;
mod metrics;

use args::Args;

const USAGE: &str = "usage: husk <command> [options]

  check [--json] [--containerd BIN] [--containerd-config FILE]
        What this node has for husk, one verdict per line; exits 1 when
        it cannot run husk pods.
  env [--json]
        The resolved configuration (every key) and what it resolves to here.
  metrics
        Prometheus text: every running pod's metrics and the node's.
  serve-metrics --listen ADDR
        The same over HTTP on ADDR (host:port), GET /metrics.
  console POD
        A root shell in POD's guest, outside any container (root only;
        needs `[debug] console = true` when the pod booted).
  logs POD
        The logs POD's VM kept (guest console, VMM, device daemons): after
        a failed boot or a VM that died, or always with logs.keep_after_stop.
  boot  Boots one micro-VM, prints what its guest reports, stops it.
{CONTAINERD_CONFIG}

Every command but containerd-config takes --config FILE (else $HUSK_CONFIG,
else /etc/husk/configuration.toml, else the built-in defaults).";

fn usage() -> String {
    USAGE.replace("{CONTAINERD_CONFIG}", containerd_config::USAGE)
}

fn main() {
    let mut args = Args::new(std::env::args().skip(1).collect());
    let command = args.command();
    let quiet_logs = matches!(
        command.as_deref(),
        Some("check" | "env" | "metrics" | "containerd-config")
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if quiet_logs { "warn" } else { "info" }.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match command.as_deref() {
        Some("check") => check::run(args),
        Some("env") => env::run(args),
        Some("metrics") => metrics::run(args),
        Some("serve-metrics") => metrics::serve(args),
        Some("console") => console::run(args),
        Some("logs") => logs::run(args),
        Some("boot") => boot::run(args),
        Some("containerd-config") => containerd_config::run(args),
        Some("-h" | "--help" | "help") => {
            println!("{}", usage());
            Ok(0)
        }
        _ => {
            eprintln!("{}", usage());
            Ok(2)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("husk: {e:#}");
            std::process::exit(match e.downcast_ref::<args::UsageError>() {
                Some(_) => 2,
                None => 1,
            });
        }
    }
}
