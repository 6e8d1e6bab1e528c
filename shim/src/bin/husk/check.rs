//! `husk check`: what this node has for husk, one line per fact with a
//! verdict — `ok`, `warn` (works, with a cost the line names), `fail`
//! (husk pods cannot run until it is fixed) or `info` — and exit status 1
//! when any line fails, 0 otherwise (2: the command line was wrong).
//! `--json` prints the same lines as JSON. The decisions are the ones the
//! shim makes (husk_hypervisor::resolve_vmm, the preflight checks), never
//! a second copy of them.

mod artifacts;
mod containerd;
mod host;

use crate::args::{self, Args};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
    Info,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
            Verdict::Info => "info",
        }
    }
}

/// One checked fact.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

pub fn line(check: &'static str, verdict: Verdict, detail: impl Into<String>) -> Line {
    Line {
        check,
        verdict,
        detail: detail.into(),
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// True when no line failed: this node can run husk pods.
    pub can_run_pods: bool,
    pub checks: Vec<Line>,
}

/// Where containerd is asked.
pub struct ContainerdTarget {
    /// The containerd binary (`--containerd`, else `containerd` on PATH).
    pub binary: Option<String>,
    /// Its configuration file (`--containerd-config`, else containerd's
    /// own default).
    pub config: Option<String>,
}

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let json = args.flag("--json");
    let target = ContainerdTarget {
        binary: args.value("--containerd")?,
        config: args.value("--containerd-config")?,
    };
    let source = args::config_source(&mut args)?;
    args.finish()?;
    let report = check(&source, &target);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for l in &report.checks {
            println!("{:<5} {:<18} {}", l.verdict.as_str(), l.check, l.detail);
        }
        let count = |v| report.checks.iter().filter(|l| l.verdict == v).count();
        if report.can_run_pods {
            println!(
                "husk check: this node can run husk pods ({} warnings)",
                count(Verdict::Warn)
            );
        } else {
            println!(
                "husk check: this node cannot run husk pods ({} failed)",
                count(Verdict::Fail)
            );
        }
    }
    Ok(if report.can_run_pods { 0 } else { 1 })
}

fn check(source: &args::Source, target: &ContainerdTarget) -> Report {
    let mut checks = Vec::new();
    let config = match args::load(source) {
        Ok(c) => {
            checks.push(line("config", Verdict::Ok, source.to_string()));
            c
        }
        Err(e) => {
            checks.push(line(
                "config",
                Verdict::Fail,
                format!("{e:#}; the checks below use the built-in defaults"),
            ));
            husk_config::Config::default()
        }
    };
    let h = &config.hypervisor;
    checks.extend(host::accelerator_and_vmm(h));
    checks.push(host::vhost());
    checks.push(artifacts::kernel(&h.kernel));
    checks.push(artifacts::initrd(&h.initrd, config.debug.console));
    checks.push(artifacts::daemon(
        "virtiofsd",
        "hypervisor.virtiofsd_path",
        &h.virtiofsd_path,
    ));
    checks.push(artifacts::daemon(
        "vsock backend",
        "hypervisor.vsock_backend_path",
        &h.vsock_backend_path,
    ));
    checks.extend(artifacts::vm_image(&config.vm));
    let dump = containerd::inspect(target);
    checks.extend(dump.lines.clone());
    checks.push(host::cgroups(dump.systemd_cgroup));
    checks.extend(containerd::cni(&dump));
    checks.push(host::memory(&config));
    checks.push(host::debug_console(&config));
    Report {
        can_run_pods: !checks.iter().any(|l| l.verdict == Verdict::Fail),
        checks,
    }
}
