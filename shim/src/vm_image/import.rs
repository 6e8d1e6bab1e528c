//! The start of a VM whose root volume is blank (docs/vm-pods.md, "The
//! root disk on a volume"): QEMU, still paused, imports the image's disk
//! into the volume (husk-hypervisor's `vm_volume::import`), its progress
//! told on the container's stderr as QEMU's own messages are; then the
//! vCPUs run. An import that fails is never booted.

use super::context::chain;
use super::root_volume::ImportProgress;
use husk_hypervisor::qemu::vm_volume;
use husk_hypervisor::vm_image::VmImage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// An import of the image's disk into the root volume, for start to run.
pub struct PendingImport {
    pub virtual_size: u64,
    /// The container's stderr (QEMU's messages), for its progress.
    pub stderr: mpsc::Sender<Vec<u8>>,
}

/// Runs the root volume's import (QEMU paused), telling its progress on
/// the container's stderr, then lets the vCPUs run. An import that fails
/// is never booted: QEMU is ended, and the volume, whose first MiB is
/// written last, still reads as blank.
pub async fn import_then_boot(
    vm: Arc<VmImage>,
    import: PendingImport,
    importing: Arc<AtomicBool>,
    timeout: Duration,
    id: String,
) {
    let tell = |line: String| {
        let _ = import.stderr.try_send(line.into_bytes());
    };
    let size = import.virtual_size;
    tell(format!(
        "husk-vm: the root volume is blank: importing the image's disk ({} MiB) into it; \
         the VM boots once it is whole\n",
        size.div_ceil(1 << 20)
    ));
    let began = Instant::now();
    let mut progress = ImportProgress::new(size);
    let mut on_progress = |done: u64| {
        if let Some(line) = progress.at(done) {
            tell(line);
        }
    };
    let result = vm_volume::import(vm.qmp(), size, timeout, &mut on_progress).await;
    let result = match result {
        Ok(()) => vm
            .qmp()
            .execute("cont", None, timeout)
            .await
            .map(drop)
            .map_err(vm_volume::ImportError::from),
        Err(e) => Err(e),
    };
    importing.store(false, Ordering::SeqCst);
    match result {
        Ok(()) => {
            let secs = began.elapsed().as_secs();
            tracing::info!(container_id = %id, seconds = secs, "root volume imported; the VM runs");
            tell(format!("husk-vm: import done in {secs} s; booting\n"));
        }
        Err(e) => {
            let e = chain(e);
            tracing::warn!(container_id = %id, %e, "root volume import failed; the VM is ended");
            tell(format!("husk-vm: the import failed ({e}); the VM is ended and the volume left blank, to be imported again at the next start\n"));
            vm.kill();
        }
    }
}
