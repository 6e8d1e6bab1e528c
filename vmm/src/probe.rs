//! Can this `/dev/kvm` run guest code at all? Opening the device is not
//! enough to know: a PVM host (module kvm_pvm) opens fine. The probe runs
//! three instructions in real mode (`out` to a port, twice, then `hlt`) in
//! a throwaway VM and checks the exits KVM reports. Tests that need a
//! working KVM use it to decide between running and printing SKIPPED.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The port and bytes the probe writes.
const PROBE_PORT: u16 = 0x3f8;
const PROBE_BYTES: [u8; 2] = [b'O', b'K'];

/// Why KVM cannot run guest code here.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("probe memory: {0}")]
    Memory(#[source] vm_memory::mmap::FromRangesError),
    #[error("probe code: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
    #[error(
        "real-mode probe: exit {exit} after output {seen:?}, expected {PROBE_BYTES:?} then HLT"
    )]
    UnexpectedExit { exit: String, seen: Vec<u8> },
    #[error("real-mode probe: no HLT after output {seen:?}")]
    NoHlt { seen: Vec<u8> },
}

/// `Ok(())` when KVM ran the probe as a CPU would; otherwise why not.
pub fn kvm_runs_guest_code() -> Result<(), ProbeError> {
    let kvm_err = |what| move |source| ProbeError::Kvm { what, source };
    // Declared before the VM, so it is dropped (unmapped) after it.
    let mem = crate::memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)])
        .map_err(ProbeError::Memory)?;
    let kvm = Kvm::new().map_err(kvm_err("/dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    // One region, made just above.
    let region = mem.iter().next().expect("the probe memory has its region");
    let r = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is `mem`'s mapping, which lives until after `vm`
    // (and its vCPU) are dropped at the end of this function, so KVM never
    // holds an address that is no longer mapped.
    unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    // mov dx, 0x3f8; mov al, 'O'; out dx, al; mov al, 'K'; out dx, al; hlt
    let code = [0xba, 0xf8, 0x03, 0xb0, b'O', 0xee, 0xb0, b'K', 0xee, 0xf4];
    mem.write_slice(&code, GuestAddress(0x1000))
        .map_err(ProbeError::Write)?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;

    let mut seen = Vec::new();
    // Without an in-kernel irqchip, `hlt` exits to us; a bounded number of
    // exits keeps a misbehaving KVM from looping here.
    for _ in 0..8 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PROBE_PORT, data)) => seen.extend_from_slice(data),
            Ok(VcpuExit::Hlt) if seen == PROBE_BYTES => return Ok(()),
            Ok(exit) => {
                let exit = format!("{exit:?}");
                return Err(ProbeError::UnexpectedExit { exit, seen });
            }
            Err(e) if e.errno() == libc::EINTR => {}
            Err(source) => {
                return Err(ProbeError::Kvm {
                    what: "real-mode probe: KVM_RUN",
                    source,
                })
            }
        }
    }
    Err(ProbeError::NoHlt { seen })
}
