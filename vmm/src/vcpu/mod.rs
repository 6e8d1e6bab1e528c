//! One vCPU: its boot state (registers, FPU, MSRs, CPUID, LAPIC) and the
//! run loop that hands I/O exits to the [`Bus`] until the guest shuts down
//! or the VMM asks it to stop; its snapshot state is `state`'s.
//!
//! Stopping: the VMM sets the shared stop flag and sends [`kick_signal`] to
//! the vCPU thread; the signal makes a blocking `KVM_RUN` return EINTR, and
//! the loop checks the flag before every entry. A stopped vCPU completes
//! the I/O exit it was in (one KVM_RUN with `immediate_exit`), so its
//! registers are those after the instruction: what a snapshot must hold.

pub(crate) mod regs;
mod run;
mod state;

pub use run::{install_kick_handler, kick_signal, Vcpu, VcpuError, VcpuStop};
pub(crate) use state::msrs_to_save;
