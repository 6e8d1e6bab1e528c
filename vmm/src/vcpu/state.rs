//! A vCPU's state for snapshots: read from a stopped vCPU
//! ([`Vcpu::save`]) and set on a new one in a clone ([`Vcpu::restore`]),
//! in the orders KVM needs (as Firecracker's `arch/x86_64/vcpu.rs` and
//! QEMU's `kvm_arch_get/put_registers` do them):
//!
//! - save: MP state first (KVM_GET_MP_STATE may take pending APIC events
//!   into the state), the vCPU events last (the other reads can change
//!   what is pending);
//! - restore: CPUID first (much of the rest is checked against it), MP
//!   state, then regs before sregs before the vCPU events (SET_REGS drops
//!   a pending exception that SET_VCPU_EVENTS puts back), sregs before
//!   the LAPIC (sregs carry the APIC base), the LAPIC before the MSRs (the
//!   TSC deadline MSR only takes with the LAPIC set up).
//!
//! The MSRs saved are every MSR `KVM_GET_MSR_INDEX_LIST` names plus the
//! MTRRs (which KVM does not list; QEMU saves them by hand too), less
//! those this vCPU cannot read. A clone accepts only MSRs of that set.

use super::run::{Vcpu, VcpuError};
use crate::snapshot::format::{VcpuState, MAX_MSRS};
use kvm_bindings::{kvm_msr_entry, CpuId, Msrs, KVM_MAX_MSR_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

/// MTRRs: MTRRcap's 8 variable pairs, the fixed ranges, MTRRdefType.
const MTRR_MSRS: [u32; 28] = [
    0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
    0x20d, 0x20e, 0x20f, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e,
    0x26f, 0x2ff,
];

/// The MSRs a snapshot holds on this host: KVM's list and the MTRRs,
/// without repeats, at most [`MAX_MSRS`].
pub fn msrs_to_save(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    let mut list: Vec<u32> = kvm.get_msr_index_list()?.as_slice().to_vec();
    list.extend(MTRR_MSRS);
    list.sort_unstable();
    list.dedup();
    if list.len() > MAX_MSRS {
        tracing::warn!("KVM lists {} MSRs; saving the first {MAX_MSRS}", list.len());
        list.truncate(MAX_MSRS);
    }
    Ok(list)
}

/// The values of `indices` this vCPU can read. KVM_GET_MSRS stops at the
/// first MSR it cannot read; that one is left out and the rest read on.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, kvm_ioctls::Error> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<_> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).expect("a chunk fits KVM_MAX_MSR_ENTRIES");
        let read = fd.get_msrs(&mut msrs)?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        if read < chunk.len() {
            tracing::debug!("MSR {:#x} not readable; left out", chunk[read]);
        }
        // Past the entry KVM stopped at (or the whole chunk).
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(out)
}

impl Vcpu {
    /// This vCPU's state; call it only once its thread has left KVM_RUN
    /// for good, with the I/O it was in completed (`run` does that when it
    /// is stopped) and every other vCPU stopped too.
    pub(crate) fn save(&self, msrs: &[u32]) -> Result<VcpuState, VcpuError> {
        let index = self.index;
        let kvm = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        let fd = &self.fd;
        let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
        let debugregs = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        let cpuid = fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = read_msrs(fd, msrs).map_err(kvm("KVM_GET_MSRS"))?;
        let events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            mp_state,
            events,
            msrs,
            cpuid,
        })
    }

    /// Creates vCPU `index` with `state`, a snapshot's. Its MSRs must be
    /// ones `allowed_msrs` (this host's [`msrs_to_save`]) names; KVM checks
    /// the rest and its refusal names the ioctl.
    pub(crate) fn restore(
        vm: &VmFd,
        index: u8,
        state: &VcpuState,
        allowed_msrs: &[u32],
    ) -> Result<Self, VcpuError> {
        let kvm = |what| {
            move |source| VcpuError::Kvm {
                index,
                what,
                source,
            }
        };
        if let Some(m) = state.msrs.iter().find(|m| !allowed_msrs.contains(&m.index)) {
            return Err(VcpuError::UnknownMsr {
                index,
                msr: m.index,
            });
        }
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        // Bounded by the parser (MAX_CPUID, the FAM's own limit).
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::Cpuid { index })?;
        fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        fd.set_mp_state(state.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: KVM copies its uABI xsave size from the pointer, which is
        // the 4 KiB of kvm_xsave unless the process asked for dynamic
        // XSTATE features (ARCH_REQ_XCOMP_GUEST_PERM); husk-vmm never does.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&state.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&state.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).expect("a chunk fits KVM_MAX_MSR_ENTRIES");
            let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if set != chunk.len() {
                return Err(VcpuError::Msr {
                    index,
                    msr: chunk[set].index,
                    set,
                    total: chunk.len(),
                });
            }
        }
        fd.set_vcpu_events(&state.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(Vcpu { fd, index })
    }
}
