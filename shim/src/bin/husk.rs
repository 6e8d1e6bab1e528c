//! `husk`: the operator's command line. `husk boot` starts one micro-VM from
//! the configuration, asks its agent what it is, shows that a host file is
//! visible in the guest through virtio-fs, and shuts the VM down: the
//! quickest check that a host can run husk guests. `husk logs POD` prints
//! the logs a pod's VM kept (guest console, VMM, device daemons).

use anyhow::{bail, Context};
use husk_config::Config;
use husk_hypervisor::{MicroVm, VmSpec};
use husk_proto::agent::{GuestInfoRequest, ReadSharedFileRequest};
use std::path::PathBuf;

const USAGE: &str = "usage: husk boot [--config FILE]\n\
    \x20      husk logs POD [--config FILE]\n\
    boot: boots a micro-VM with the configured kernel and agent, prints what\n\
    the guest reports, and stops it.\n\
    logs: prints the logs of pod POD's VM in <logs.dir>/POD/ (the guest\n\
    console, the VMM's and the device daemons' output, older part first),\n\
    kept after a failed boot or a VM that died, or with logs.keep_after_stop.\n\
    The configuration is FILE, else $HUSK_CONFIG, else\n\
    /etc/husk/configuration.toml, else the built-in defaults.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["boot"] => boot(None).await,
        ["boot", "--config", path] => boot(Some(PathBuf::from(path))).await,
        ["logs", pod] => logs(pod, None),
        ["logs", pod, "--config", path] | ["logs", "--config", path, pod] => {
            logs(pod, Some(PathBuf::from(path)))
        }
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

fn load(config_path: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::load_default()?,
    })
}

/// The logs in the order a reader wants them: each log's rotated older
/// part before its current one.
const LOG_FILES: &[&str] = &[
    husk_hypervisor::log_dir::CONSOLE_LOG,
    husk_hypervisor::log_dir::VMM_LOG,
    "virtiofsd.log",
    "vhost-device-vsock.log",
];

fn logs(pod: &str, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let config = load(config_path)?;
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

async fn boot(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let shared = tempfile::Builder::new()
        .prefix("husk-boot-")
        .tempdir()
        .context("creating the shared directory")?;
    let marker = format!(
        "written on the host at {:?}\n",
        std::time::SystemTime::now()
    );
    std::fs::write(shared.path().join("hello.txt"), &marker).context("writing hello.txt")?;

    let id = format!("boot-{}", std::process::id());
    let spec = VmSpec {
        id,
        shared_dir: shared.path().to_owned(),
        ..VmSpec::default()
    };
    let mut vm = MicroVm::start(&config, spec)
        .await
        .context("starting the VM")?;
    let result = report(&vm, &marker).await;
    vm.stop().await;
    result
}

async fn report(vm: &MicroVm, marker: &str) -> anyhow::Result<()> {
    let mut agent = vm.agent().await?;
    let info = agent
        .guest_info(GuestInfoRequest {})
        .await
        .context("GuestInfo")?
        .into_inner();
    let t = vm.timings();
    println!("accelerator:       {}", vm.accelerator());
    println!("host kernel:       {}", host_kernel_release());
    println!("guest kernel:      {}", info.kernel_release);
    println!("agent version:     {}", info.agent_version);
    println!("guest boot id:     {}", info.boot_id);
    println!("guest cpus:        {}", info.online_cpus);
    println!(
        "guest memory:      {} MiB total, {} MiB available",
        info.memory_total_kib / 1024,
        info.memory_available_kib / 1024
    );
    println!("guest uptime:      {} ms", info.uptime_ms);
    println!("boot to agent:     {} ms (host clock)", t.total.as_millis());
    let file = agent
        .read_shared_file(ReadSharedFileRequest {
            path: "hello.txt".into(),
            max_bytes: 4096,
        })
        .await
        .context("ReadSharedFile hello.txt")?
        .into_inner();
    let seen = String::from_utf8_lossy(&file.content);
    println!(
        "shared dir:        {} ({})",
        info.shared_dir,
        seen.trim_end()
    );
    if seen != marker {
        bail!("the guest sees {seen:?} in hello.txt, the host wrote {marker:?}");
    }
    Ok(())
}

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
