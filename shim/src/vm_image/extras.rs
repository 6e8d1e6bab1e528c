//! What a VM gets beyond its disks and NIC, decided from its container's
//! bundle (docs/vm-pods.md): the graphical console ([`vnc`]), UEFI Secure
//! Boot (`io.husk.vm.secure-boot`), a TPM 2.0 whose state the state
//! volume keeps ([`super::state`]); and, once QEMU runs, the console's
//! listeners; the tools disk of `exec -it` ([`super::tools`]).

use super::error::VmError;
use super::launch::Prepared;
use super::state::VmState;
use super::vnc::{self, VncPlan};
use crate::host::network::PodNetwork;
use husk_hypervisor::qemu::vm_extras::VmExtras;
use husk_hypervisor::VmImage;
use std::sync::Arc;
use std::time::Duration;

/// The extras of one VM: what QEMU is told, and what the shim serves.
#[derive(Debug, Default)]
pub struct Extras {
    pub launch: VmExtras,
    pub vnc: Option<VncPlan>,
}

/// The extras `p` asks for; a TPM where it has a state volume (`state`);
/// the tools disk of `exec -it` (`tools_disk`, [`super::tools::disk`]).
pub fn of(
    p: &Prepared,
    state: Option<&VmState>,
    tools_disk: Option<std::path::PathBuf>,
) -> Result<Extras, VmError> {
    let vnc = vnc::plan(&p.bundle)?;
    Ok(Extras {
        launch: VmExtras {
            display: vnc.as_ref().map(VncPlan::display),
            secure_boot: super::launch::secure_boot(&p.bundle)?,
            tpm_state: state.map(|s| s.tpm.clone()),
            tools_disk,
        },
        vnc,
    })
}

/// Starts what the shim serves for a running QEMU (the VNC console).
pub async fn start(
    extras: &Extras,
    vm: &Arc<VmImage>,
    network: Option<&PodNetwork>,
    call_timeout: Duration,
) -> Result<(), VmError> {
    if let Some(plan) = &extras.vnc {
        vnc::serve(plan, vm.clone(), network, call_timeout).await?;
    }
    Ok(())
}
