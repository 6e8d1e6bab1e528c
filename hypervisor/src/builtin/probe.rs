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

/// `Ok(())` when KVM ran the probe as a CPU would; otherwise why not.
pub fn kvm_runs_guest_code() -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let mem = super::memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)])
        .map_err(|e| format!("probe memory: {e}"))?;
    let region = mem.iter().next().ok_or("probe memory has no region")?;
    let r = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `mem` outlives `vm`, which is dropped at the end of this fn.
    unsafe { vm.set_user_memory_region(r) }.map_err(|e| format!("memory region: {e}"))?;
    // mov dx, 0x3f8; mov al, 'O'; out dx, al; mov al, 'K'; out dx, al; hlt
    let code = [0xba, 0xf8, 0x03, 0xb0, b'O', 0xee, 0xb0, b'K', 0xee, 0xf4];
    mem.write_slice(&code, GuestAddress(0x1000))
        .map_err(|e| format!("probe code: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    let mut seen = Vec::new();
    // Without an in-kernel irqchip, `hlt` exits to us; a bounded number of
    // exits keeps a misbehaving KVM from looping here.
    for _ in 0..8 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PROBE_PORT, data)) => seen.extend_from_slice(data),
            Ok(VcpuExit::Hlt) if seen == PROBE_BYTES => return Ok(()),
            Ok(exit) => {
                let exit = format!("{exit:?}");
                return Err(format!(
                    "real-mode probe: exit {exit} after output {seen:?}, expected {PROBE_BYTES:?} then HLT"
                ));
            }
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(format!("real-mode probe: KVM_RUN: {e}")),
        }
    }
    Err(format!("real-mode probe: no HLT after output {seen:?}"))
}
