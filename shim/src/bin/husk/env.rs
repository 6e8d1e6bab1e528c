//! `husk env`: the configuration as the shim would load it (every key,
//! defaults filled in) and what it resolves to on this host — the
//! accelerator, the VMM and why, the timeouts in force — as TOML, or JSON
//! with `--json`. The `[hypervisor]`, `[pod]`, `[timeouts.*]` and
//! `[debug]` tables are configuration.toml's; `[husk]` and `[resolved]`
//! are reports.

use crate::args::{self, Args};
use anyhow::Context;
use husk_config::{AccelTimeouts, Config};
use serde::Serialize;

#[derive(Serialize)]
pub struct Env {
    pub husk: HuskInfo,
    pub resolved: Resolved,
    #[serde(flatten)]
    pub config: Config,
}

#[derive(Serialize)]
pub struct HuskInfo {
    pub version: &'static str,
    /// The file read, or that there is none.
    pub config_file: String,
}

#[derive(Serialize)]
pub struct Resolved {
    pub accelerator: &'static str,
    pub accelerator_reason: String,
    pub backend: &'static str,
    pub backend_reason: String,
    /// What the shim appends to husk's kernel command line.
    pub kernel_params: String,
    /// `[timeouts.kvm]` or `[timeouts.tcg]`, by the accelerator.
    pub timeouts: AccelTimeouts,
}

pub fn resolve(config: &Config, source: &args::Source) -> Env {
    let (accel, backend) = husk_hypervisor::resolve_vmm(&config.hypervisor);
    let timeouts = match accel.accelerator {
        husk_hypervisor::Accelerator::Kvm => config.timeouts.kvm,
        husk_hypervisor::Accelerator::Tcg => config.timeouts.tcg,
    };
    let mut booted = config.clone();
    husk_shim::micro_vm::console::ask_guest_for_console(&mut booted);
    Env {
        husk: HuskInfo {
            version: env!("CARGO_PKG_VERSION"),
            config_file: source.to_string(),
        },
        resolved: Resolved {
            accelerator: accel.accelerator.as_str(),
            accelerator_reason: accel.reason,
            backend: backend.backend.as_str(),
            backend_reason: backend.reason,
            kernel_params: booted.hypervisor.kernel_params,
            timeouts,
        },
        config: config.clone(),
    }
}

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let json = args.flag("--json");
    let source = args::config_source(&mut args)?;
    args.finish()?;
    let config = args::load(&source)?;
    let env = resolve(&config, &source);
    if json {
        println!("{}", serde_json::to_string_pretty(&env)?);
    } else {
        print!("{}", toml::to_string(&env).context("writing TOML")?);
    }
    Ok(0)
}
