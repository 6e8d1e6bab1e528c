//! What a VM gets beyond its disks and NIC, decided from its container's
//! bundle (docs/vm-pods.md): the TPM and firmware state of its state
//! volume ([`state`]), Secure Boot, the graphical console ([`vnc`]), and
//! the tools of `kubectl exec -it`; and, once QEMU runs, the console's
//! listeners.

use super::error::VmError;
use super::launch::Prepared;
use super::state;
use super::vnc::{self, VncPlan};
use crate::host::network::PodNetwork;
use husk_hypervisor::qemu::vm_extras::VmExtras;
use husk_hypervisor::qemu::vm_image::ImageBoot;
use husk_hypervisor::VmImage;
use std::sync::Arc;
use std::time::Duration;

/// The extras of one VM: what QEMU is told, and what the shim serves.
#[derive(Debug, Default)]
pub struct Extras {
    pub launch: VmExtras,
    pub vnc: Option<VncPlan>,
}

/// The extras `p` asks for, with `boot` already decided.
pub fn of(p: &Prepared, boot: &ImageBoot) -> Result<Extras, VmError> {
    let tpm_state = state::state_volume(p)?
        .map(|volume| state::tpm_dir(&volume))
        .transpose()?;
    let vnc = vnc::plan(&p.bundle)?;
    Ok(Extras {
        launch: VmExtras {
            secure_boot: state::secure_boot(p, boot)?,
            tpm_state,
            display: vnc.as_ref().map(VncPlan::display),
            tools_disk: None,
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
