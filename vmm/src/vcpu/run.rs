//! A vCPU and its run loop: [`Vcpu`] is created with its boot state
//! (`regs`), then runs, handing I/O exits to the [`Bus`], until the guest
//! shuts down or the VMM asks it to stop.

use super::regs;
use crate::boot::loader::BootEntry;
use crate::devices::bus::Bus;
use crate::memory::GuestMemoryMmap;
use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: {what}: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM refused MSR {msr:#x} ({set} of {total} boot MSRs set)")]
    Msr {
        index: u8,
        msr: u32,
        set: usize,
        total: usize,
    },
    #[error("vCPU {index}: {0}", index = .1)]
    Regs(#[source] regs::RegsError, u8),
    #[error("vCPU {index}: MSR {msr:#x} in the snapshot is not one KVM saves on this host")]
    UnknownMsr { index: u8, msr: u32 },
    #[error("vCPU {index}: the snapshot's CPUID does not fit KVM's table")]
    Cpuid { index: u8 },
}

/// Why a vCPU's run loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// Triple fault (`reboot=t`) or a KVM shutdown event: the guest is done.
    GuestShutdown,
    /// A KVM system reset event.
    GuestReset,
    /// The VMM asked it to stop.
    Stopped,
    /// KVM could not run the guest any further.
    Failed(String),
}

/// The signal that interrupts `KVM_RUN` in a vCPU thread.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the no-op handler for [`kick_signal`]; without a handler the
/// signal's default action would kill the process.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

pub struct Vcpu {
    pub(super) fd: VcpuFd,
    pub(super) index: u8,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` and sets its CPUID, MSRs, FPU and
    /// LAPIC. The boot processor (index 0) also gets the entry registers;
    /// the others wait for INIT/SIPI in the in-kernel LAPIC.
    pub fn new(
        vm: &VmFd,
        supported_cpuid: &CpuId,
        index: u8,
        count: u8,
        mem: &GuestMemoryMmap,
        boot: &BootEntry,
    ) -> Result<Self, VcpuError> {
        let kvm = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm("KVM_CREATE_VCPU"))?;

        let mut cpuid = supported_cpuid.clone();
        regs::setup_cpuid(&mut cpuid, index, count);
        fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;

        let entries = regs::boot_msrs();
        let msrs = Msrs::from_entries(&entries).expect("a dozen MSRs fit KVM_MAX_MSR_ENTRIES");
        let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::Msr {
                index,
                msr: entries[set].index,
                set,
                total: entries.len(),
            });
        }

        fd.set_fpu(&regs::boot_fpu()).map_err(kvm("KVM_SET_FPU"))?;

        let mut lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        regs::setup_lapic(&mut lapic);
        fd.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))?;

        if index == 0 {
            let mut sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            regs::setup_sregs(mem, boot.mode, &mut sregs).map_err(|e| VcpuError::Regs(e, index))?;
            fd.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(boot))
                .map_err(kvm("KVM_SET_REGS"))?;
        }
        Ok(Vcpu { fd, index })
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// The vCPU fd, for tests that read its state.
    #[cfg(test)]
    fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the guest until it shuts down, fails, or `stop` is set.
    pub fn run(&mut self, bus: &Bus, stop: &AtomicBool) -> VcpuStop {
        loop {
            if stop.load(Ordering::Acquire) {
                self.complete_pending_io();
                // Where the guest was is the first question when a boot
                // hangs and the host gives up on it.
                tracing::debug!("vCPU {} stopped at {}", self.index, self.rip());
                return VcpuStop::Stopped;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => bus.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => bus.pio_write(port, data),
                Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(addr, data),
                Ok(VcpuExit::MmioWrite(addr, data)) => bus.mmio_write(addr, data),
                Ok(VcpuExit::Shutdown) => return VcpuStop::GuestShutdown,
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    return match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuStop::GuestReset,
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::GuestShutdown,
                        other => VcpuStop::Failed(format!("KVM system event {other}")),
                    }
                }
                // Only without an in-kernel irqchip; treat as power-off.
                Ok(VcpuExit::Hlt) => return VcpuStop::GuestShutdown,
                Ok(VcpuExit::Intr) => {}
                Ok(VcpuExit::InternalError) => {
                    let run = self.fd.get_kvm_run();
                    // SAFETY: KVM filled the `internal` member for this exit.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    return VcpuStop::Failed(format!(
                        "KVM internal error, suberror {suberror} ({}) at {}",
                        internal_error_name(suberror),
                        self.rip()
                    ));
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return VcpuStop::Failed(format!(
                        "KVM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
                    ))
                }
                Ok(other) => {
                    let what = format!("{other:?}");
                    return VcpuStop::Failed(format!("unexpected exit {what} at {}", self.rip()));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return VcpuStop::Failed(format!("KVM_RUN: {e}")),
            }
        }
    }

    /// Finishes the instruction of the last I/O exit (an `in` gets its
    /// value, rip moves past it) without running guest code: KVM_RUN with
    /// `immediate_exit` set does only that, then returns EINTR.
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            other => tracing::warn!(
                "vCPU {}: completing its last exit: {:?}",
                self.index,
                other.map(|exit| format!("{exit:?}"))
            ),
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    fn rip(&self) -> String {
        match self.fd.get_regs() {
            Ok(r) => format!("rip {:#x}", r.rip),
            Err(e) => format!("unknown rip ({e})"),
        }
    }
}

fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception during exception delivery",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::loader::EntryMode;
    use crate::memory::create_guest_memory;
    use crate::probe::kvm_runs_guest_code;
    use vm_memory::GuestAddress;

    /// What KVM holds after `Vcpu::new` is what regs.rs computed: KVM may
    /// adjust or drop state it does not support, so read it back.
    #[test]
    fn kvm_keeps_the_boot_state_we_set() {
        if let Err(why) = kvm_runs_guest_code() {
            println!("SKIPPED: KVM cannot run guest code here: {why}");
            return;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = create_guest_memory(16).unwrap();
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let boot = BootEntry {
            entry: GuestAddress(0x10_0000),
            mode: EntryMode::Linux64,
            boot_info: GuestAddress(0x7000),
        };
        let vcpu = Vcpu::new(&vm, &cpuid, 0, 1, &mem, &boot).unwrap();
        let lapic = vcpu.fd().get_lapic().unwrap();
        assert_eq!(regs::lapic_reg(&lapic, regs::APIC_LVT0) & 0x1_0700, 0x700);
        assert_eq!(regs::lapic_reg(&lapic, regs::APIC_LVT1) & 0x1_0700, 0x400);
        let sregs = vcpu.fd().get_sregs().unwrap();
        assert_eq!((sregs.cs.selector, sregs.cs.l), (regs::BOOT_CS, 1));
        assert_eq!(sregs.efer & regs::EFER_LMA, regs::EFER_LMA);
        let r = vcpu.fd().get_regs().unwrap();
        assert_eq!((r.rip, r.rsi), (0x10_0000, 0x7000));
        let fpu = vcpu.fd().get_fpu().unwrap();
        // Only FCW: KVM_GET_FPU reads MXCSR back as 0 here whatever
        // KVM_SET_FPU wrote (Firecracker notes the same of KVM), so a
        // read-back of MXCSR proves nothing.
        assert_eq!(fpu.fcw, 0x37f);
        let leaf1 = vcpu
            .fd()
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap()
            .as_slice()
            .iter()
            .find(|e| e.function == 1)
            .copied()
            .unwrap();
        assert_ne!(leaf1.ecx & regs::CPUID_HYPERVISOR_BIT, 0);
        assert_eq!(leaf1.ebx >> 24, 0, "APIC ID of vCPU 0");
    }
}
