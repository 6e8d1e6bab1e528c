//! The host's side of `husk check`: KVM and the accelerator, the VMM
//! `auto` picks, TCG fallback, vhost devices, cgroups, memory, and the
//! debug console setting.

use super::{line, Line, Verdict};
use husk_config::{AcceleratorChoice, Backend, Config, HypervisorConfig};
use husk_hypervisor::Accelerator;
use std::path::Path;
use std::process::Command;

/// What one pod's VM costs on the host beyond its guest memory: the
/// RuntimeClass' `overhead.podFixed` memory (config/runtimeclass.yaml).
const POD_HOST_OVERHEAD_MIB: u64 = 192;

pub fn accelerator_and_vmm(h: &HypervisorConfig) -> Vec<Line> {
    let mut out = Vec::new();
    let host = husk_hypervisor::detect_accelerator();
    let modules = kvm_modules();
    let module = if modules.is_empty() {
        "no kvm_* module".to_owned()
    } else {
        format!("{} module", modules.join(", "))
    };
    out.push(match host.accelerator {
        Accelerator::Kvm => line("kvm", Verdict::Ok, format!("{} ({module})", host.reason)),
        Accelerator::Tcg => line(
            "kvm",
            Verdict::Warn,
            format!("{} ({module}): guests run under TCG", host.reason),
        ),
    });
    let (accel, backend) = husk_hypervisor::resolve_vmm(h);
    out.push(match (h.accelerator, host.accelerator, accel.accelerator) {
        (AcceleratorChoice::Kvm, Accelerator::Tcg, _) => line(
            "accelerator",
            Verdict::Fail,
            format!(
                "hypervisor.accelerator = \"kvm\", but this host cannot run a guest \
                     under KVM: {}",
                host.reason
            ),
        ),
        (_, _, Accelerator::Kvm) => {
            line("accelerator", Verdict::Ok, format!("kvm: {}", accel.reason))
        }
        (_, _, Accelerator::Tcg) => line(
            "accelerator",
            Verdict::Warn,
            format!(
                "tcg: {}; boots take seconds, timeouts from [timeouts.tcg]",
                accel.reason
            ),
        ),
    });
    let (key, binary) = match backend.backend {
        Backend::HuskVmm => ("hypervisor.vmm_path", &h.vmm_path),
        _ => ("hypervisor.qemu_path", &h.qemu_path),
    };
    out.push(
        if backend.backend == Backend::HuskVmm && accel.accelerator != Accelerator::Kvm {
            line(
                "vmm",
                Verdict::Fail,
                format!(
                    "husk-vmm needs KVM, and the accelerator is TCG: {}",
                    accel.reason
                ),
            )
        } else {
            match husk_hypervisor::check_executable(key, binary) {
                Ok(()) => line(
                    "vmm",
                    Verdict::Ok,
                    format!(
                        "{} ({}): {}",
                        backend.backend.as_str(),
                        version_or_path(binary, &["--version"]),
                        backend.reason
                    ),
                ),
                Err(e) => line(
                    "vmm",
                    Verdict::Fail,
                    format!("{}: {e}", backend.backend.as_str()),
                ),
            }
        },
    );
    out.push(tcg_fallback(h, backend.backend));
    out
}

/// Whether QEMU can run guests without KVM.
fn tcg_fallback(h: &HypervisorConfig, backend: Backend) -> Line {
    if husk_hypervisor::check_executable("hypervisor.qemu_path", &h.qemu_path).is_err() {
        let verdict = if backend == Backend::Qemu {
            Verdict::Fail
        } else {
            Verdict::Info
        };
        return line(
            "tcg fallback",
            verdict,
            format!("no QEMU at {}: no TCG fallback", h.qemu_path.display()),
        );
    }
    let accels = Command::new(&h.qemu_path)
        .args(["-accel", "help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let has = |a: &str| accels.lines().any(|l| l.trim() == a);
    if has("tcg") {
        line("tcg fallback", Verdict::Ok, "QEMU can run guests under TCG")
    } else {
        line(
            "tcg fallback",
            Verdict::Warn,
            format!("{} -accel help lists no tcg", h.qemu_path.display()),
        )
    }
}

/// The KVM modules the kernel has, loaded or built in (/sys/module).
fn kvm_modules() -> Vec<String> {
    let mut modules: Vec<String> = std::fs::read_dir("/sys/module")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|m| m.starts_with("kvm_"))
        .collect();
    modules.sort();
    modules
}

/// The first line `binary args` prints, or its path when it prints none.
pub fn version_or_path(binary: &Path, args: &[&str]) -> String {
    Command::new(binary)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| binary.display().to_string())
}

pub fn vhost() -> Line {
    let state = |dev: &str| {
        if Path::new(dev).exists() {
            format!("{dev} present")
        } else {
            format!("{dev} absent")
        }
    };
    line(
        "vhost",
        Verdict::Info,
        format!(
            "{}, {}: not needed, husk's devices are vhost-user daemons (virtiofsd, \
             vhost-device-vsock) and a TAP",
            state("/dev/vhost-vsock"),
            state("/dev/vhost-net")
        ),
    )
}

/// cgroup version, and the driver containerd's runc handler uses.
pub fn cgroups(systemd_driver: Option<bool>) -> Line {
    let version = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2 (unified)"
    } else {
        "v1"
    };
    match systemd_driver {
        Some(true) => line(
            "cgroups",
            Verdict::Warn,
            format!(
                "{version}, systemd driver (runc's SystemdCgroup = true): husk reads only \
                 cgroupfs paths, so a pod's VM stays in its shim's cgroup, outside the \
                 pod's limits"
            ),
        ),
        Some(false) => line(
            "cgroups",
            Verdict::Ok,
            format!("{version}, cgroupfs driver"),
        ),
        None => line(
            "cgroups",
            Verdict::Info,
            format!("{version}, driver unknown (no runc handler in containerd's config)"),
        ),
    }
}

/// MemAvailable against what one pod of the configured size costs.
pub fn memory(config: &Config) -> Line {
    let available_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib / 1024);
    let Some(available) = available_mib else {
        return line(
            "memory",
            Verdict::Warn,
            "cannot read MemAvailable from /proc/meminfo",
        );
    };
    let per_pod = u64::from(config.hypervisor.memory_mib) + POD_HOST_OVERHEAD_MIB;
    let pods = available / per_pod;
    let detail = format!(
        "{available} MiB available: room for {pods} pods of {} MiB guest memory \
         (+{POD_HOST_OVERHEAD_MIB} MiB host overhead each)",
        config.hypervisor.memory_mib
    );
    line(
        "memory",
        if pods == 0 {
            Verdict::Fail
        } else {
            Verdict::Ok
        },
        detail,
    )
}

pub fn debug_console(config: &Config) -> Line {
    if config.debug.console {
        line(
            "debug console",
            Verdict::Warn,
            "on: every pod booted now serves a root shell in its guest to root on this \
             host (husk console)",
        )
    } else {
        line(
            "debug console",
            Verdict::Info,
            "off ([debug] console = false)",
        )
    }
}
