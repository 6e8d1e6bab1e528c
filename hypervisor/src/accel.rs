//! Choosing the accelerator. A `/dev/kvm` that opens is not enough: on PVM
//! hosts (module kvm_pvm) it exists, but without vmx/svm in the CPU it only
//! runs PVM-enlightened kernels and a normal guest dies early in boot. So
//! KVM is used only when the device answers *and* the CPU has vmx or svm.

use husk_config::AcceleratorChoice;
use std::fmt;
use std::os::fd::AsRawFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn as_str(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accelerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accelerator chosen and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceleratorDecision {
    pub accelerator: Accelerator,
    pub reason: String,
}

/// Applies the configured choice; `auto` probes the host.
pub fn resolve_accelerator(choice: AcceleratorChoice) -> AcceleratorDecision {
    match choice {
        AcceleratorChoice::Kvm => AcceleratorDecision {
            accelerator: Accelerator::Kvm,
            reason: "hypervisor.accelerator = \"kvm\" in the configuration".into(),
        },
        AcceleratorChoice::Tcg => AcceleratorDecision {
            accelerator: Accelerator::Tcg,
            reason: "hypervisor.accelerator = \"tcg\" in the configuration".into(),
        },
        AcceleratorChoice::Auto => detect_accelerator(),
    }
}

/// Probes `/dev/kvm` and the CPU flags.
pub fn detect_accelerator() -> AcceleratorDecision {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    decide(kvm_api_version(), &cpuinfo)
}

/// KVM_GET_API_VERSION: `_IO(KVMIO, 0x00)` with KVMIO = 0xAE
/// (linux/kvm.h). One ioctl, so the shim needs no KVM crate for it.
const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;

fn kvm_api_version() -> Result<i32, String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and touches no memory
    // of ours; `kvm` is an open fd for the whole call.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version < 0 {
        return Err(format!(
            "/dev/kvm: KVM_GET_API_VERSION: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(version)
}

fn decide(kvm: Result<i32, String>, cpuinfo: &str) -> AcceleratorDecision {
    let tcg = |reason: String| AcceleratorDecision {
        accelerator: Accelerator::Tcg,
        reason,
    };
    let version = match kvm {
        Ok(v) => v,
        Err(e) => return tcg(format!("KVM unusable ({e})")),
    };
    if version != KVM_API_VERSION {
        return tcg(format!(
            "/dev/kvm reports API version {version}, expected 12"
        ));
    }
    match hardware_virtualization(cpuinfo) {
        Some(flag) => AcceleratorDecision {
            accelerator: Accelerator::Kvm,
            reason: format!("/dev/kvm works and the CPU has {flag}"),
        },
        None => tcg(
            "/dev/kvm opens but the CPU has neither vmx nor svm (a PVM or nested-less KVM \
             cannot boot a normal guest)"
                .into(),
        ),
    }
}

/// KVM_API_VERSION has been 12 since Linux 2.6.22 and is frozen.
const KVM_API_VERSION: i32 = 12;

fn hardware_virtualization(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("flags")
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']))
    })?;
    let mut words = flags.split_whitespace();
    if words.clone().any(|w| w == "vmx") {
        Some("vmx")
    } else if words.any(|w| w == "svm") {
        Some("svm")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVM_HOST: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm\n";
    const VMX_HOST: &str = "processor\t: 0\nflags\t\t: fpu vme vmx ept tsc\n";
    const SVM_HOST: &str = "processor\t: 0\nflags\t\t: fpu svm npt tsc\n";

    #[test]
    fn pvm_kvm_without_vmx_falls_back_to_tcg() {
        let d = decide(Ok(12), PVM_HOST);
        assert_eq!(d.accelerator, Accelerator::Tcg);
        assert!(d.reason.contains("neither vmx nor svm"), "{}", d.reason);
    }

    #[test]
    fn kvm_with_vmx_or_svm_uses_kvm() {
        assert_eq!(decide(Ok(12), VMX_HOST).accelerator, Accelerator::Kvm);
        let d = decide(Ok(12), SVM_HOST);
        assert_eq!(d.accelerator, Accelerator::Kvm);
        assert!(d.reason.contains("svm"));
    }

    #[test]
    fn missing_kvm_falls_back_to_tcg() {
        let d = decide(Err("/dev/kvm: No such file or directory".into()), VMX_HOST);
        assert_eq!(d.accelerator, Accelerator::Tcg);
        assert!(d.reason.contains("No such file"));
    }

    #[test]
    fn wrong_api_version_falls_back_to_tcg() {
        assert_eq!(decide(Ok(11), VMX_HOST).accelerator, Accelerator::Tcg);
    }

    #[test]
    fn explicit_choice_overrides_detection() {
        assert_eq!(
            resolve_accelerator(AcceleratorChoice::Kvm).accelerator,
            Accelerator::Kvm
        );
        assert_eq!(
            resolve_accelerator(AcceleratorChoice::Tcg).accelerator,
            Accelerator::Tcg
        );
    }

    #[test]
    fn detection_on_this_host_matches_its_cpu_flags() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let d = detect_accelerator();
        if hardware_virtualization(&cpuinfo).is_none() {
            assert_eq!(d.accelerator, Accelerator::Tcg, "{}", d.reason);
        }
        println!("this host: {} ({})", d.accelerator, d.reason);
    }
}

/// Which VMM runs a VM, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDecision {
    /// HuskVmm or Qemu (never Auto).
    pub backend: husk_config::Backend,
    pub reason: String,
}

/// Resolves `hypervisor.backend`: husk-vmm needs KVM (it has no emulator),
/// so "auto" takes it only where the accelerator resolved to KVM and
/// husk-vmm is installed.
pub fn resolve_backend(
    choice: husk_config::Backend,
    accel: &AcceleratorDecision,
    vmm_installed: bool,
) -> BackendDecision {
    use husk_config::Backend;
    let pick = |backend, reason: String| BackendDecision { backend, reason };
    match choice {
        Backend::Qemu | Backend::HuskVmm => pick(
            choice,
            format!(
                "hypervisor.backend = \"{}\" in the configuration",
                choice.as_str()
            ),
        ),
        Backend::Auto => match (accel.accelerator, vmm_installed) {
            (Accelerator::Kvm, true) => pick(
                Backend::HuskVmm,
                format!("KVM runs guests here ({})", accel.reason),
            ),
            (Accelerator::Kvm, false) => pick(
                Backend::Qemu,
                "KVM runs guests here, but husk-vmm (hypervisor.vmm_path) is not installed".into(),
            ),
            (Accelerator::Tcg, _) => pick(
                Backend::Qemu,
                format!(
                    "husk-vmm needs KVM, and this host gets TCG ({})",
                    accel.reason
                ),
            ),
        },
    }
}

/// The accelerator and VMM a VM started with `h` gets, and why: the
/// decisions `MicroVm::start` makes, for tools that report them (`husk
/// check`, `husk env`, the pod metrics).
pub fn resolve_vmm(h: &husk_config::HypervisorConfig) -> (AcceleratorDecision, BackendDecision) {
    let accel = resolve_accelerator(h.accelerator);
    let vmm_installed =
        crate::preflight::check_executable("hypervisor.vmm_path", &h.vmm_path).is_ok();
    let backend = resolve_backend(h.backend, &accel, vmm_installed);
    (accel, backend)
}

#[cfg(test)]
mod backend_tests {
    use super::*;
    use husk_config::Backend;

    fn accel(accelerator: Accelerator) -> AcceleratorDecision {
        AcceleratorDecision {
            accelerator,
            reason: "test".into(),
        }
    }

    #[test]
    fn auto_takes_husk_vmm_only_on_kvm_with_husk_vmm_installed() {
        let d = resolve_backend(Backend::Auto, &accel(Accelerator::Kvm), true);
        assert_eq!(d.backend, Backend::HuskVmm);
        let d = resolve_backend(Backend::Auto, &accel(Accelerator::Kvm), false);
        assert_eq!(d.backend, Backend::Qemu);
        assert!(d.reason.contains("husk-vmm"), "{}", d.reason);
        let d = resolve_backend(Backend::Auto, &accel(Accelerator::Tcg), true);
        assert_eq!(d.backend, Backend::Qemu);
        assert!(d.reason.contains("needs KVM"), "{}", d.reason);
    }

    #[test]
    fn a_named_backend_is_taken_as_named() {
        for b in [Backend::Qemu, Backend::HuskVmm] {
            let d = resolve_backend(b, &accel(Accelerator::Tcg), false);
            assert_eq!(d.backend, b);
            assert!(d.reason.contains("in the configuration"), "{}", d.reason);
            assert!(d.reason.contains(b.as_str()), "{}", d.reason);
        }
    }
}
