//! `husk boot` starts one micro-VM from
//! the configuration, asks its agent what it is, shows that a host file is
//! visible in the guest through virtio-fs, and shuts the VM down: the
//! quickest check that a host can run husk guests.

use crate::args::{self, Args};
use anyhow::{bail, Context};
use husk_config::Config;
use husk_hypervisor::{MicroVm, VmSpec};
use husk_proto::agent::{GuestInfoRequest, ReadSharedFileRequest};

pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let source = args::config_source(&mut args)?;
    args.finish()?;
    let config = args::load(&source)?;
    args::runtime()?.block_on(boot(config))?;
    Ok(0)
}

async fn boot(config: Config) -> anyhow::Result<()> {
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
