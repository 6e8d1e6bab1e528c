//! `husk logs POD`: prints the logs pod POD's VM kept in <logs.dir>/POD/
//! (the guest console, the VMM's and the device daemons' output, each
//! rotated older part first): kept after a failed boot or a VM that died,
//! or always with `logs.keep_after_stop`. The files hold guest bytes, so
//! each is read up to its cap and printed with control characters escaped.

use crate::args::{self, Args, UsageError};
use anyhow::{bail, Context};
use husk_config::Config;

/// The logs in the order a reader wants them: each log's rotated older
/// part before its current one.
const LOG_FILES: &[&str] = &[
    husk_hypervisor::log_dir::CONSOLE_LOG,
    husk_hypervisor::log_dir::VMM_LOG,
    "virtiofsd.log",
    "vhost-device-vsock.log",
];

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let source = args::config_source(&mut args)?;
    let pod = args
        .positional()
        .ok_or_else(|| UsageError("logs needs a pod id".into()))?;
    args.finish()?;
    let config = args::load(&source)?;
    print(&config, &pod)?;
    Ok(0)
}

fn print(config: &Config, pod: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    if !husk_proto::is_safe_id(pod, 64) {
        bail!("{pod:?} is not a pod id (1-64 characters of [A-Za-z0-9_.-], not starting with '.')");
    }
    let dir = config.logs.dir.join(pod);
    if !dir.is_dir() {
        bail!(
            "no logs of pod {pod} in {}: a VM keeps them after a failed boot or when it died \
             (or always, with logs.keep_after_stop = true)",
            config.logs.dir.display()
        );
    }
    let cap = config.logs.max_file_kib << 10;
    let mut out = std::io::stdout().lock();
    for name in LOG_FILES {
        let current = dir.join(name);
        for path in [husk_hypervisor::log_pump::rotated(&current), current] {
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            // The files are capped; a larger one was not written by husk.
            let mut bytes = Vec::new();
            file.take(cap)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            writeln!(out, "==> {} <==", path.display())?;
            out.write_all(husk_hypervisor::log_pump::printable(&bytes).as_bytes())?;
            if !bytes.ends_with(b"\n") {
                writeln!(out)?;
            }
        }
    }
    Ok(())
}
